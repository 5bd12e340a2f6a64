# SOHO program of the HPC Dock Submit ROP (its hidden soho_program parameter names
# this file; Houdini finds it under $HOUDINI_PATH/soho). Rendering the node submits
# the job instead of rendering anything locally; the node has no inputs, so nothing
# renders before this runs, and the submit itself waits for Houdini's event loop.
from hpcdock.rop import soho_render

soho_render()
