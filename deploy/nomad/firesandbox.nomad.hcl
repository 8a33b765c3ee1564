# firesandbox on Nomad: a system job runs one serve on every client that
# has KVM. Written for, not run on, a real cluster; see the README's
# "Many hosts" section.
#
# The clients need the raw_exec driver enabled (serve runs as root: it
# confines its VMMs itself, with namespaces, seccomp and unprivileged
# users, which Nomad's exec isolation would get in the way of), the
# firesandbox binary in /usr/local/bin, and the node meta kvm = "true".
# Secrets come from Vault (kv path firesandbox).
#
#   nomad job run deploy/nomad/firesandbox.nomad.hcl
job "firesandbox" {
  type        = "system"
  datacenters = ["*"]

  constraint {
    attribute = "${meta.kvm}"
    value     = "true"
  }

  # One client at a time: a stopping host hibernates its sandboxes into S3
  # and another host adopts them before the next one stops.
  update {
    max_parallel     = 1
    min_healthy_time = "10s"
    healthy_deadline = "10m"
  }

  group "serve" {
    network {
      port "http" {
        static = 7070
      }
    }

    # HAProxy finds the hosts here (server-template on
    # _firesandbox._tcp.service.consul); a draining host fails the check.
    service {
      name     = "firesandbox"
      port     = "http"
      provider = "consul"

      check {
        type     = "http"
        path     = "/healthz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "serve" {
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/firesandbox"
        args = [
          "--data-dir", "/var/lib/firesandbox",
          "--run-dir", "/run/firesandbox",
          "serve",
          "--listen", "0.0.0.0:7070",
          "--advertise", "http://${NOMAD_IP_http}:7070",
          # The node's name: stable across restarts, so a restarted host
          # keeps the sandboxes it owns.
          "--host-id", "${node.unique.name}",
        ]
      }

      # SIGTERM drains, hibernates into S3 and hands the sandboxes over.
      kill_signal  = "SIGTERM"
      kill_timeout = "300s"

      vault {}

      template {
        destination = "secrets/firesandbox.env"
        env         = true
        data        = <<-EOT
          {{ with secret "kv/data/firesandbox" }}
          FIRESANDBOX_CLUSTER={{ .Data.data.cluster_url }}
          FIRESANDBOX_API_KEY={{ .Data.data.api_key }}
          FIRESANDBOX_TRUSTED_KEYS={{ .Data.data.trusted_keys }}
          AWS_ACCESS_KEY_ID={{ .Data.data.aws_access_key_id }}
          AWS_SECRET_ACCESS_KEY={{ .Data.data.aws_secret_access_key }}
          {{ end }}
          FIRESANDBOX_REMOTE=s3://firesandbox-hibernations/cluster
          FIRESANDBOX_SIGNING_KEY={{ env "NOMAD_SECRETS_DIR" }}/snapshot-signing.key
          AWS_ENDPOINT_URL_S3=https://s3.eu-west-1.amazonaws.com
          AWS_REGION=eu-west-1
        EOT
      }

      template {
        destination = "secrets/snapshot-signing.key"
        perms       = "0400"
        data        = <<-EOT
          {{ with secret "kv/data/firesandbox" }}{{ .Data.data.signing_key }}{{ end }}
        EOT
      }

      # What serve itself uses; its VMs are accounted by its own limits
      # (--max-vms, --capacity), outside Nomad's.
      resources {
        cpu    = 1000
        memory = 1024
      }
    }
  }
}
