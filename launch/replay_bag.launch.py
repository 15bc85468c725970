"""Replay a ROS 2 bag into neuralrecon_node on the bag's clock, with RViz.

    ros2 launch neuralrecon_ros replay_bag.launch.py bag:=/data/room_bag rate:=0.5

Includes neuralrecon.launch.py with use_sim_time:=true and runs ``ros2 bag play --clock`` after
``delay`` seconds, so the node is subscribed (to the latched /tf_static too) before the bag starts.
The bag's topics must match the node's input parameters (or pass image_topic:=... and friends).
For reconstruction without ROS, use ``neuralrecon-ros replay BAG --output DIR`` instead.

An included launch file shares this file's launch configurations: an argument declared here overrides
the default of the same argument there. So ``config`` defaults to the package's parameter file here
too (an empty default would reach the node as the parameter file path "").
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.action import Action
from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    IncludeLaunchDescription,
    OpaqueFunction,
    TimerAction,
)
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

PACKAGE = "neuralrecon_ros"
BOOL_CHOICES = ["true", "false"]
KEEP = "empty: the parameter file's value"
NODE_LAUNCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "neuralrecon.launch.py")


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="bag to play: a rosbag2 directory or a .mcap/.db3 file"),
        DeclareLaunchArgument("rate", default_value="1.0",
                              description="playback rate (ros2 bag play --rate)"),
        DeclareLaunchArgument("loop", default_value="false", choices=BOOL_CHOICES,
                              description="play the bag in a loop (each restart is a time jump: on_time_jump decides)"),
        DeclareLaunchArgument("delay", default_value="3.0",
                              description="seconds to wait before playing, while the node starts"),
        DeclareLaunchArgument("rviz", default_value="true", choices=BOOL_CHOICES, description="start RViz"),
        DeclareLaunchArgument(
            "config", default_value=os.path.join(share, "config", "neuralrecon.yaml"),
            description="ROS 2 parameter file of the node (neuralrecon_node: ros__parameters: ...)",
        ),
        DeclareLaunchArgument("mode", default_value="", choices=["", "depth", "neuralrecon"],
                              description=KEEP),
        DeclareLaunchArgument("checkpoint", default_value="", description=KEEP),
        DeclareLaunchArgument("device", default_value="", choices=["", "cpu", "cuda", "auto"],
                              description=KEEP),
        DeclareLaunchArgument("image_topic", default_value="", description=KEEP),
        DeclareLaunchArgument("camera_info_topic", default_value="",
                              description=KEEP),
        DeclareLaunchArgument("depth_topic", default_value="", description=KEEP),
        OpaqueFunction(function=_launch_setup),
    ])


def _launch_setup(context: LaunchContext) -> list[Action]:
    node_arguments = {
        "use_sim_time": "true",
        "config": LaunchConfiguration("config").perform(context),
        "rviz": LaunchConfiguration("rviz").perform(context),
        "mode": LaunchConfiguration("mode").perform(context),
        "checkpoint": LaunchConfiguration("checkpoint").perform(context),
        "device": LaunchConfiguration("device").perform(context),
        "image_topic": LaunchConfiguration("image_topic").perform(context),
        "camera_info_topic": LaunchConfiguration("camera_info_topic").perform(context),
        "depth_topic": LaunchConfiguration("depth_topic").perform(context),
    }
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(NODE_LAUNCH), launch_arguments=node_arguments.items()
    )
    play = ["ros2", "bag", "play", LaunchConfiguration("bag").perform(context), "--clock",
            "--rate", LaunchConfiguration("rate").perform(context)]
    if LaunchConfiguration("loop").perform(context) == "true":
        play.append("--loop")
    delay = float(LaunchConfiguration("delay").perform(context))
    player = TimerAction(period=delay, actions=[ExecuteProcess(cmd=play, output="screen")])
    return [node, player]
