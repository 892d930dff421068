"""How the widgets look from the back of a classroom."""

BIG = "font-size:1.25em; line-height:1.5"  # readable on a projector
