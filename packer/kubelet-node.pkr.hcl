# Node image for Mesos + Kubernetes hosts running kubelet-resource-wrapper.
# Written for Packer 1.6.6 (Debian bookworm's package): builders and the
# ansible provisioner are built in, so there is no required_plugins block.
# Builds a complete node: host prerequisites, Debian's containerd (systemd
# cgroups), kubelet (pinned, from an apt repository or local .debs), the
# agent's .deb and its standby unit. Offline with kubelet_debs and a base
# image that can reach a Debian mirror (or has containerd already).
packer {
  required_version = ">= 1.6.6"
}

variable "base_image" {
  type        = string
  description = "Local path of the base qcow2 cloud image (e.g. debian-12-genericcloud-amd64.qcow2)."
}

variable "base_image_checksum" {
  type        = string
  description = "Checksum of base_image, e.g. \"sha512:...\" (file: URLs are also accepted)."
}

variable "kubernetes_version" {
  type        = string
  default     = "1.33.0"
  description = "Kubernetes version of the node (image name and build-info)."
}

variable "kubelet_version" {
  type        = string
  default     = "1.33.0-1.1"
  description = "Exact apt version of kubelet installed (and held) from kubernetes_apt_repo. Ignored with kubelet_debs."
}

variable "kubernetes_apt_repo" {
  type        = string
  default     = "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.asc] https://pkgs.k8s.io/core:/stable:/v1.33/deb/ /"
  description = "apt source line of the Kubernetes packages (a local mirror for offline builds)."
}

variable "kubernetes_apt_key_url" {
  type        = string
  default     = "https://pkgs.k8s.io/core:/stable:/v1.33/deb/Release.key"
  description = "Signing key of kubernetes_apt_repo (ASCII armored). \"\" for a [trusted=yes] mirror."
}

variable "containerd_version" {
  type        = string
  default     = ""
  description = "Exact apt version of Debian's containerd, e.g. 1.6.20~ds1-1+deb12u3. \"\" = the base image's candidate."
}

variable "agent_version" {
  type        = string
  default     = "0.1.0-1"
  description = "Version of the kubelet-resource-wrapper .deb (image name and build-info)."
}

variable "agent_deb" {
  type        = string
  default     = "../dist/kubelet-resource-wrapper_0.1.0-1_amd64.deb"
  description = "Local path of the kubelet-resource-wrapper .deb (packaging/build-release.sh)."
}

variable "kubelet_debs" {
  type        = list(string)
  default     = []
  description = "Local .deb files of kubelet (and kubeadm, kubernetes-cni) for an offline build. Non-empty = no Kubernetes apt repository."
}

variable "ssh_username" {
  type        = string
  default     = "packer"
  description = "Build user created by http/user-data (cloud-init NoCloud)."
}

variable "ssh_password" {
  type        = string
  default     = "packer"
  description = "Build user's password; must match http/user-data. The user is removed before shutdown."
}

variable "accelerator" {
  type        = string
  default     = "kvm"
  description = "qemu accelerator: kvm, or tcg without /dev/kvm (slow)."
}

variable "output_directory" {
  type        = string
  default     = "output-kubelet-node"
  description = "Directory for the built image (gitignored: /packer/output-*)."
}

# Computed here rather than inline in the provisioner: Packer 1.6.6 `validate`
# evaluates locals (so a bad expression fails the check) but not provisioner
# arguments.
locals {
  build_stamp = formatdate("YYYYMMDDhhmmss", timestamp())
  image_name  = "kubelet-node-k8s${var.kubernetes_version}-krw${var.agent_version}-${local.build_stamp}"
  # Every role variable the image sets, as one --extra-vars JSON document.
  ansible_vars = jsonencode({
    kubelet_resource_wrapper_deb_src                = abspath(var.agent_deb)
    kubelet_resource_wrapper_extra_debs             = [for d in var.kubelet_debs : abspath(d)]
    kubelet_resource_wrapper_kubelet_source         = length(var.kubelet_debs) > 0 ? "debs" : "apt"
    kubelet_resource_wrapper_kubelet_version        = var.kubelet_version
    kubelet_resource_wrapper_kubernetes_apt_repo    = var.kubernetes_apt_repo
    kubelet_resource_wrapper_kubernetes_apt_key_url = var.kubernetes_apt_key_url
    kubelet_resource_wrapper_containerd_version     = var.containerd_version
    # nothing starts kubelet while baking: standby is enabled and starts at first boot
    kubelet_resource_wrapper_restart_on_change = false
    kubelet_resource_wrapper_build_info = {
      kubernetes_version = var.kubernetes_version
      kubelet_version    = length(var.kubelet_debs) > 0 ? "local .debs" : var.kubelet_version
      containerd_version = var.containerd_version == "" ? "Debian's candidate" : var.containerd_version
      agent_version      = var.agent_version
      image              = local.image_name
    }
  })
}

source "qemu" "kubelet_node" {
  iso_url          = var.base_image
  iso_checksum     = var.base_image_checksum
  disk_image       = true
  format           = "qcow2"
  disk_size        = "20G"
  accelerator      = var.accelerator
  headless         = true
  output_directory = var.output_directory
  vm_name          = "${local.image_name}.qcow2"
  memory           = 2048
  cpus             = 2
  # cloud-init NoCloud seed served by Packer's own HTTP server (no network
  # beyond the host): creates the build user from http/user-data.
  http_directory = "http"
  qemuargs = [
    ["-smbios", "type=1,serial=ds=nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/"],
  ]
  boot_wait        = "5s"
  communicator     = "ssh"
  ssh_username     = var.ssh_username
  ssh_password     = var.ssh_password
  ssh_timeout      = "15m"
  shutdown_command = "echo '${var.ssh_password}' | sudo -S sh -c 'cloud-init clean --logs; userdel -r ${var.ssh_username}; shutdown -P now'"
}

build {
  sources = ["source.qemu.kubelet_node"]

  provisioner "ansible" {
    playbook_file = "../ansible/node.yml"
    user          = var.ssh_username
    use_proxy     = false
    groups        = ["k8s_nodes"]
    extra_arguments = [
      "--become",
      "--extra-vars", local.ansible_vars,
      "--extra-vars", "ansible_python_interpreter=/usr/bin/python3",
      # Password login of the throw-away build user (needs sshpass on the
      # build host); Packer 1.6.6 does not pass it itself with use_proxy=false.
      "--extra-vars", "ansible_password=${var.ssh_password} ansible_become_password=${var.ssh_password}",
    ]
    ansible_env_vars = [
      "ANSIBLE_HOST_KEY_CHECKING=False",
      "ANSIBLE_ROLES_PATH=../ansible/roles",
    ]
  }
}
