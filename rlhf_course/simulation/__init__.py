"""The world the course trains in: tasks with a hidden gold score, simulated labelers, the feedback they
give, and the data sets built from them. Imports only ``core``."""
