"""What the lessons show: plots, and the widgets for class (labeling, sampling explorer, training
dashboard, KL explorer). Imports the layers below it."""
