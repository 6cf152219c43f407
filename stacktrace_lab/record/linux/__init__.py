"""The Linux-program front end: ELF loading, the process image, the dynamic loader's files,
line tables read a compile unit at a time, stack discovery and region naming.
"""
