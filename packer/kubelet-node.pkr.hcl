# Node image for Mesos + Kubernetes hosts running kubelet-resource-wrapper.
# Written for Packer 1.6.6 (Debian bookworm's package): builders and the
# ansible provisioner are built in, so there is no required_plugins block.
# Offline: every input is a local file (base image, agent binary, .debs).
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
  description = "Kubernetes version baked into the image (recorded in build-info; kubelet comes from kubelet_debs)."
}

variable "agent_version" {
  type        = string
  default     = "0.1.0"
  description = "kubelet-resource-wrapper version (recorded in build-info and the image name)."
}

variable "agent_binary" {
  type        = string
  default     = "../target/release/kubelet-resource-wrapper"
  description = "Local path of the kubelet-resource-wrapper release binary."
}

variable "kubelet_debs" {
  type        = list(string)
  default     = []
  description = "Local .deb files installed first (kubelet, containerd, ...). Empty = base image already has them."
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
  build_stamp  = formatdate("YYYYMMDDhhmmss", timestamp())
  image_name   = "kubelet-node-k8s${var.kubernetes_version}-krw${var.agent_version}-${local.build_stamp}"
  agent_binary = abspath(var.agent_binary)
  extra_debs   = jsonencode({ kubelet_resource_wrapper_extra_debs = [for d in var.kubelet_debs : abspath(d)] })
  build_info = jsonencode({ kubelet_resource_wrapper_build_info = {
    kubernetes_version = var.kubernetes_version
    agent_version      = var.agent_version
    image              = local.image_name
  } })
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
      "--extra-vars", "kubelet_resource_wrapper_binary_src=${local.agent_binary}",
      "--extra-vars", local.extra_debs,
      "--extra-vars", "kubelet_resource_wrapper_restart_on_change=false",
      "--extra-vars", local.build_info,
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
