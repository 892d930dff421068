"""Beyond one process and beyond this package: the data-parallel check and the bridge to TRL's trainers.
Imports the layers below it."""
