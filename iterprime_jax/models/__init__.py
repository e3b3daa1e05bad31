"""Models: the Flax ports (`blip`, `albef`, `mask2former`), the table of architectures
(`architectures`: each kind's config class, module, key table, config file, converter and
loaded type), what `load` returns (`loaded`: `Model`, `ProposerModel`), every checkpoint file
read and write (`checkpoint`), source -> converted checkpoint (`conversion`, CLI `convert`)
and loading a converted checkpoint (`loading`)."""
