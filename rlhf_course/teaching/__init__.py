"""What the lessons show: plots and interactive widgets. Imports the layers below it."""
