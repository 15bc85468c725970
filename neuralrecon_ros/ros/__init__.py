"""The rclpy side of neuralrecon_ros: the only code that imports rclpy, tf2 or ROS message packages.

:mod:`.node` is the ``neuralrecon_node`` entry point (it runs without ROS only to say that ROS is
needed); :mod:`.transport` is the rclpy node that feeds the transport-agnostic node logic.
"""
