"""pyrebootcert: kernel-offloaded reboot detection for IPsec gateways."""

__version__ = "0.1.0"
