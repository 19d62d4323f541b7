"""BPF C sources of pyrebootcert, shipped as package data (``pyrebootcert.bpf``)."""
