"""The XDP classifier: ABI mirror, bcc loader, BPF_PROG_TEST_RUN wrapper, CLI."""
