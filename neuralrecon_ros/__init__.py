"""neuralrecon_ros: live monocular 3D reconstruction (NeuralRecon) for ROS 2, with a ROS-free core."""

from .core.threads import prefer_passive_wait

# Before any submodule imports torch: OpenMP reads its wait policy once, when torch loads it (core/threads.py).
prefer_passive_wait()

__version__ = "0.1.0"
