"""Start neuralrecon_node with the package's parameter file, and RViz if asked.

    ros2 launch neuralrecon_ros neuralrecon.launch.py image_topic:=/cam/color/image_raw \\
        camera_info_topic:=/cam/color/camera_info rviz:=true

Every parameter comes from ``config`` (default: the package's config/neuralrecon.yaml). The launch
arguments named like a parameter (image_topic, mode, checkpoint, ...) override it only when given:
their empty default keeps the file's value.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.action import Action
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "neuralrecon_ros"
EXECUTABLE = "neuralrecon_node"  # also the node name, which the parameter file's top-level key must match
BOOL_CHOICES = ["true", "false"]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", default_value=os.path.join(share, "config", "neuralrecon.yaml"),
            description="ROS 2 parameter file of the node (neuralrecon_node: ros__parameters: ...)",
        ),
        DeclareLaunchArgument("checkpoint", default_value="", description="NeuralRecon checkpoint path "
                              "(mode neuralrecon); empty: the parameter file's value"),
        DeclareLaunchArgument("device", default_value="", choices=["", "cpu", "cuda", "auto"],
                              description="torch device; empty: the parameter file's value"),
        DeclareLaunchArgument("mode", default_value="", choices=["", "depth", "neuralrecon"],
                              description="'neuralrecon' (monocular) or 'depth' (RGB-D fusion); empty: the "
                              "parameter file's value"),
        DeclareLaunchArgument("global_frame", default_value="", description="fixed frame of the map "
                              "(REP-105 'odom' or 'map'); empty: the parameter file's value"),
        DeclareLaunchArgument("image_topic", default_value="", description="colour image topic; empty: the "
                              "parameter file's value"),
        DeclareLaunchArgument("camera_info_topic", default_value="", description="camera_info topic of the "
                              "colour image; empty: the parameter file's value"),
        DeclareLaunchArgument("depth_topic", default_value="", description="registered depth topic (mode "
                              "depth); empty: the parameter file's value"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=BOOL_CHOICES,
                              description="use /clock (bag replay with ros2 bag play --clock)"),
        DeclareLaunchArgument("rviz", default_value="false", choices=BOOL_CHOICES,
                              description="also start RViz with the package's display config"),
        DeclareLaunchArgument("rviz_config", default_value=os.path.join(share, "rviz", "neuralrecon.rviz"),
                              description="RViz display config"),
        DeclareLaunchArgument("log_level", default_value="info", description="node log level"),
        OpaqueFunction(function=_launch_setup),
    ])


def _launch_setup(context: LaunchContext) -> list[Action]:
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context) == "true"
    given = {
        "checkpoint": LaunchConfiguration("checkpoint").perform(context),
        "device": LaunchConfiguration("device").perform(context),
        "mode": LaunchConfiguration("mode").perform(context),
        "global_frame": LaunchConfiguration("global_frame").perform(context),
        "image_topic": LaunchConfiguration("image_topic").perform(context),
        "camera_info_topic": LaunchConfiguration("camera_info_topic").perform(context),
        "depth_topic": LaunchConfiguration("depth_topic").perform(context),
    }
    # ParameterValue(str): launch would otherwise YAML-parse a value ("123" -> int, "true" -> bool)
    overrides = {name: ParameterValue(value, value_type=str) for name, value in given.items() if value}
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=EXECUTABLE,
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("config"), {**overrides, "use_sim_time": use_sim_time}],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        output="log",
        arguments=["-d", LaunchConfiguration("rviz_config")],
        parameters=[{"use_sim_time": use_sim_time}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return [node, rviz]
