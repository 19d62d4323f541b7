"""The controller daemon (``rebootcert run`` / ``rebootcert status``).

It keeps the XDP classifier's view of inbound SAs equal to the kernel's
(:mod:`.sasync`), answers sampled unknown-SPI ESP with the pre-signed certificate
(:mod:`.responder`), pushes our certificate to peers when new SAs with them appear
(:mod:`.announcer`), and turns a verified Bad SPI into a flush and a renegotiation
(:mod:`.verifier`, :mod:`.backends`). :mod:`.daemon` wires them to the kernel through
the small interfaces of :mod:`.ports`; everything else is testable with fakes.
"""
