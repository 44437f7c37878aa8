"""The inversion-based editors SteerMusic is compared with (Niu et al., section 5.3), behind the
same call surface as :class:`steer.Editor`: ``edit(audio, source=..., target=...)`` and
``edit_latent(latent, ...)``, both returning an :class:`~steer.editor.EditResult`.

- :class:`SDEdit`: noise the source part-way, denoise towards the target prompt (Meng et al., 2021).
- :class:`DDIMInversion`: invert the source with the source prompt, sample with the target prompt.
- :class:`DDPMInversion`: ZETA's edit-friendly DDPM inversion with the source prompt, DDPM
  sampling from the same noise maps with the target prompt (Manor & Michaeli, 2024).

And SteerMusic+'s personalised baseline (section 5.4):

- :class:`DreamSoundEditing`: shallow DDIM inversion with the base model, sampling with a
  concept's personalised model and the target prompt naming its token (Plitsis et al., 2024).
"""

from .ddim_inversion import DDIMInversion
from .ddpm_inversion import DDPMInversion
from .dreamsound import DreamSoundEditing
from .inversion import InversionEditor
from .sdedit import SDEdit

__all__ = ["DDIMInversion", "DDPMInversion", "DreamSoundEditing", "InversionEditor", "SDEdit"]
