"""`python -m shapesref ROOT [...]`: write ShapesRef (see `writer.main`)."""

from .writer import main

main()
