"""Image and label formats hpcnn reads and writes."""
