"""The headset/desktop client: OpenXR session, input, stream receiver, decoder, reprojection.

Never imports torch: it installs with ``timewalk[client]`` on a headset PC.
"""
