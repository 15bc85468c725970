"""neuralrecon_ros: live monocular 3D reconstruction (NeuralRecon) for ROS 2, with a ROS-free core."""

__version__ = "0.1.0"
