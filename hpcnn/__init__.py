"""hpcnn: train nnU-Net v2 on a PBS/Torque/Slurm cluster from a laptop."""

__version__ = "0.1.0"
