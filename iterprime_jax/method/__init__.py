"""The IteRPrimE method over an ITM model: language (spaCy PWE parse), gradcam (Grad-CAM over one
layer's cross-attention), heat (PWE heat map), refine (the IGRS loop), select (proposal
selection) and pipeline (`segment` and its batched forms)."""
