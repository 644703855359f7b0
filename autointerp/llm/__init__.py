"""Everything that talks to a language model: the client (:mod:`.client`), its response cache (:mod:`.cache`),
the local server's lifecycle (:mod:`.local_server`) and the server process itself (:mod:`.echo_server`).
"""
