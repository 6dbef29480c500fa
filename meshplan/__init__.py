"""meshplan: Terraform-style plan/apply for a Kuma-style service mesh on plain Envoy."""

__version__ = "0.1.0"
