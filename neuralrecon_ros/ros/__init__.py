"""The rclpy side (the only code importing ROS): :mod:`.node`, the entry point; :mod:`.transport`, the glue."""
