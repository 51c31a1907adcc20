"""Synthetic multi-view mouth videos on which no single view separates all classes (DESIGN §4).

Each clip is one speaker saying one word, filmed by up to five cameras at yaw
0 ("front"), -90 ("left90"), +30 ("right30"), +90 ("right90") and -30 ("left30") degrees,
each an .mp4 with its own frame rate and start offset.

How the class information is split across views (see `mouth` for the geometry):
- Lip reading. Word w = (a, b) with a = w % 5 and b = w // 5. `a` is what the tongue and
  teeth do inside the mouth: visible through the opening from 0 and +-30 degrees, occluded
  from 42 degrees on. `b` is a lip-protrusion pattern: depth, so it shows only in the
  silhouette of the +-90 degree views, where the lips push out into a funnel that changes
  about as many pixels as the interior patterns change frontally. The opening and width of
  the mouth, seen by every view, are random babble that carries no word. With 10 words the frontal group can tell
  at most 5 classes apart and the profile group 2, but every factor is seen by at least
  two views, so the full set is needed and losing any one view costs little.
- Identity. A speaker has a frontal trait (gaps between the upper teeth and their shade,
  seen through the opening from 0 and +-30 degrees) and a profile trait (how far the lips
  and chin stand out, seen from +-90 degrees); see `speakers`. Generator 3 (the default)
  draws both from continuous ranges, so every id is a new person; generator 2 has 20
  discrete pairs (k % 5, (k // 5) % 4), so ids 20 apart are the same person. Skin tone,
  texture and mouth size vary with the id weakly against per-clip lighting.

Reproducibility: a speaker's appearance depends only on its id, a word's trajectories only
on the word id, and everything else (timing, warp, babble, head motion, lighting, frame
rates, offsets, noise) on (seed, speaker, word, repetition). Labels are fixed names:
words 'w00'.., speakers 's001'..
"""

from mplstm.core.synth.generate import (
    TASKS,
    VIEWS,
    ClipPlan,
    RenderedView,
    SynthConfig,
    ViewSpec,
    generate,
    plan_clips,
    plan_scenes,
    render_clip,
)

__all__ = [
    "TASKS",
    "VIEWS",
    "ClipPlan",
    "RenderedView",
    "SynthConfig",
    "ViewSpec",
    "generate",
    "plan_clips",
    "plan_scenes",
    "render_clip",
]
