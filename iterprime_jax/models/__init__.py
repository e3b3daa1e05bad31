"""Models: the Flax ports (`blip`), checkpoint reading (`checkpoint`), HF -> orbax conversion
(`convert`) and loading a converted checkpoint (`loading`)."""
