"""Offline batch scoring (DESIGN.md §8): a manifest of clips in, one result row per clip out.

The same `core` decoding and limits as the service and the same backends, without HTTP:
`pipeline` decodes in worker processes while the backend infers, `output` commits rows
in chunks that survive a SIGKILL, `shards` splits a manifest across an Indexed Job,
`merge` joins the shards' outputs and `runner` ties them together for `mplstm score`.
"""
