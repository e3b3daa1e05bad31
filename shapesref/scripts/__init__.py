"""ShapesRef research scripts (run from the repository root; records go to bench/results/):
`recipe_probe` (short training runs, one recipe change each), `patch_position_info` (how much
of each patch token's position a ViT keeps), `albef_shapesref_probe` (the small model in
ALBEF's layout) and `train_on_device.sh` (training runs on a lent GPU)."""
