"""Everything that talks to a language model: the client (:mod:`.client`), its response cache
(:mod:`.cache`), the local server's lifecycle (:mod:`.local_server`), the server process itself
(:mod:`.echo_server`), and the session that picks the configured endpoints or the local server for a
command (:mod:`.session`).
"""
