# k3s needs the memory cgroup, which the Raspberry Pi kernel disables by
# default: the most common reason a k3s agent fails on a Pi. Only under the
# "smarter" distro override (DISTRO = "smarter", or DISTROOVERRIDES .= ":smarter").
CMDLINE:append:smarter = " cgroup_enable=cpuset cgroup_enable=memory cgroup_memory=1"
