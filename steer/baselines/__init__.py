"""The inversion-based editors SteerMusic is compared with (Niu et al., section 5.3), behind the
same call surface as :class:`steer.Editor`: ``edit(audio, source=..., target=...)`` and
``edit_latent(latent, ...)``, both returning an :class:`~steer.editor.EditResult`.

- :class:`SDEdit`: noise the source part-way, denoise towards the target prompt (Meng et al., 2021).
- :class:`DDIMInversion`: invert the source with the source prompt, sample with the target prompt.
"""

from .ddim_inversion import DDIMInversion
from .sdedit import SDEdit

__all__ = ["DDIMInversion", "SDEdit"]
