"""`python -m shapesref.training --out DIR [recipe flags]`: train the ShapesRef ITM model."""

from .trainer import main

main()
