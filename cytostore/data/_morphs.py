"""Morphology of the synthetic cell classes and the stains of the synthetic datasets.

One :class:`Morph` per class code (the codes of ``lmu`` and ``bm``; ``mll_helmholtz``
draws its cells from the same table by differential-count column, see
:data:`MLL_PB_CLASSES`). Sizes are physical (µm), so the same class drawn at each
dataset's µm/px has the same physical size and a different size in pixels. Colours are
RGB as seen on a white background at density 1; they are mixed in optical density
(Beer-Lambert), so overlapping stains darken as on a slide.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = [
    "Morph",
    "Stain",
    "MORPHS",
    "STAINS",
    "MLL_PB_CLASSES",
    "NIF_BLUR_UM",
    "subtype_morphs",
]

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Morph:
    """How to draw one class of cell (all lengths in µm).

    Attributes:
        diam_um: Mean cell diameter.
        diam_sd_um: Standard deviation of the diameter between cells.
        nc: Nucleus diameter / cell diameter.
        nucleus: Nucleus shape: ``round``, ``kidney``, ``cup`` (round with a pale
            invagination), ``band``, ``lobed``, ``smudge`` (no cytoplasm, smeared) or
            ``fragments`` (debris).
        lobes: Inclusive range of the number of lobes of a ``lobed`` nucleus.
        eccentric: Offset of the nucleus from the cell centre, fraction of the radius.
        chromatin: Stain density of the nucleus (1 = average).
        grain_um: Size of the chromatin clumps.
        clumping: Contrast of the chromatin texture (0 = smooth).
        nucleoli: Inclusive range of the number of pale nucleoli.
        cyto_rgb: Cytoplasm colour.
        cyto_density: Cytoplasm stain density (0 = none).
        granules: Number of granules in a 12 µm cell (scales with the area).
        granule_um: Granule diameter.
        granule_rgb: Granule colour.
        granules_over_nucleus: Whether granules also cover the nucleus (basophils).
        auer_p: Probability that a cell carries Auer rods.
        auer_n: Inclusive range of the number of rods when it does.
        vacuoles: Number of cytoplasmic vacuoles in a 12 µm cell.
        hof: Whether a pale perinuclear zone (Golgi hof) is drawn.
        boundary: Relative amplitude of the low-frequency outline irregularity.
        ragged: Relative amplitude of high-frequency projections (hairy cells).
        blur_um: Extra defocus blur (not identifiable cells).
    """

    diam_um: float
    diam_sd_um: float = 1.0
    nc: float = 0.6
    nucleus: str = "round"
    lobes: tuple[int, int] = (1, 1)
    eccentric: float = 0.1
    chromatin: float = 1.0
    grain_um: float = 0.5
    clumping: float = 0.3
    nucleoli: tuple[int, int] = (0, 0)
    cyto_rgb: RGB = (200, 195, 225)
    cyto_density: float = 1.0
    granules: int = 0
    granule_um: float = 0.4
    granule_rgb: RGB = (150, 90, 160)
    granules_over_nucleus: bool = False
    auer_p: float = 0.0
    auer_n: tuple[int, int] = (1, 1)
    vacuoles: int = 0
    hof: bool = False
    boundary: float = 0.04
    ragged: float = 0.0
    blur_um: float = 0.0


@dataclass(frozen=True)
class Stain:
    """How one dataset's slides and scanner look.

    Attributes:
        bg_rgb: Background colour between cells.
        rbc_rgb: Red blood cell colour at density 1.
        rbc_count: Inclusive range of red cells drawn around the white cell.
        od_scale: Per-channel factor on the optical density of every stained part
            (shifts hue and saturation between datasets).
        nucleus_rgb: Nucleus colour at density 1.
        white: Brightness of the light source (0-255).
        noise: Standard deviation of the pixel noise (0-255 scale).
        blur_px: Gaussian blur of the final image, output pixels (the datasets
            drawn on a coarser grid and resized up are blurred by the resize).
    """

    bg_rgb: RGB
    rbc_rgb: RGB
    rbc_count: tuple[int, int]
    od_scale: tuple[float, float, float]
    nucleus_rgb: RGB = (90, 45, 140)
    white: float = 250.0
    noise: float = 2.0
    blur_px: float = 0.0


_PALE_PINK: RGB = (228, 205, 218)
_SKY_BLUE: RGB = (170, 188, 228)
_DEEP_BLUE: RGB = (128, 150, 218)
_GREY_BLUE: RGB = (188, 188, 218)
_AZUROPHIL: RGB = (135, 55, 125)
_NEUTRO_GRAN: RGB = (200, 165, 200)
_EOS_GRAN: RGB = (238, 125, 85)
_BASO_GRAN: RGB = (65, 25, 95)

_MYELOBLAST = Morph(
    diam_um=14.0,
    nc=0.8,
    chromatin=0.8,
    grain_um=0.35,
    clumping=0.15,
    nucleoli=(1, 3),
    cyto_rgb=_DEEP_BLUE,
    cyto_density=0.9,
    granules=4,
    granule_rgb=_AZUROPHIL,
    auer_p=0.08,
)
_PROMYELOCYTE = Morph(
    diam_um=17.0,
    diam_sd_um=1.5,
    nc=0.6,
    eccentric=0.3,
    chromatin=0.85,
    clumping=0.2,
    nucleoli=(0, 2),
    cyto_rgb=(160, 168, 220),
    granules=70,
    granule_um=0.5,
    granule_rgb=_AZUROPHIL,
    hof=True,
)
_EOSINOPHIL = Morph(
    diam_um=13.0,
    nc=0.55,
    nucleus="lobed",
    lobes=(2, 2),
    chromatin=1.2,
    clumping=0.35,
    cyto_rgb=(232, 210, 212),
    granules=160,
    granule_um=0.6,
    granule_rgb=_EOS_GRAN,
)

#: The morphology of every class code of ``lmu`` and ``bm``.
MORPHS: dict[str, Morph] = {
    "ABE": replace(
        _EOSINOPHIL,
        diam_um=15.0,
        nucleus="kidney",
        granule_rgb=(170, 70, 110),
        granules=190,
        granule_um=0.7,
    ),
    "ART": Morph(
        diam_um=10.0,
        diam_sd_um=3.0,
        nc=0.5,
        nucleus="fragments",
        chromatin=1.1,
        cyto_rgb=(195, 175, 212),
        cyto_density=0.6,
        boundary=0.25,
        granules=15,
        granule_um=0.8,
        granule_rgb=(90, 50, 120),
    ),
    "BAS": Morph(
        diam_um=11.5,
        nc=0.6,
        nucleus="lobed",
        lobes=(2, 3),
        chromatin=0.9,
        cyto_rgb=(212, 195, 225),
        granules=75,
        granule_um=0.75,
        granule_rgb=_BASO_GRAN,
        granules_over_nucleus=True,
    ),
    "BLA": _MYELOBLAST,
    "EBO": Morph(
        diam_um=9.5,
        diam_sd_um=0.8,
        nc=0.68,
        eccentric=0.05,
        chromatin=1.55,
        grain_um=0.6,
        clumping=0.45,
        cyto_rgb=(178, 168, 205),
        cyto_density=1.1,
        boundary=0.02,
    ),
    "EOS": _EOSINOPHIL,
    "FGC": replace(
        _PROMYELOCYTE, auer_p=1.0, auer_n=(4, 9), nucleus="lobed", lobes=(2, 2)
    ),
    "HAC": Morph(
        diam_um=13.5,
        nc=0.5,
        nucleus="kidney",
        chromatin=0.9,
        clumping=0.2,
        cyto_rgb=(200, 200, 225),
        cyto_density=0.8,
        ragged=0.09,
    ),
    "KSC": Morph(
        diam_um=14.0,
        diam_sd_um=2.5,
        nc=0.95,
        nucleus="smudge",
        chromatin=0.55,
        grain_um=1.0,
        clumping=0.5,
        cyto_density=0.0,
        boundary=0.2,
    ),
    "LYA": Morph(
        diam_um=14.0,
        diam_sd_um=1.5,
        nc=0.55,
        eccentric=0.25,
        nucleus="kidney",
        chromatin=1.15,
        clumping=0.35,
        cyto_rgb=(140, 165, 225),
        cyto_density=1.1,
        boundary=0.08,
    ),
    "LYI": Morph(
        diam_um=11.0,
        nc=0.82,
        chromatin=0.95,
        grain_um=0.35,
        clumping=0.2,
        nucleoli=(1, 2),
        cyto_rgb=_SKY_BLUE,
    ),
    "LYT": Morph(
        diam_um=8.8,
        diam_sd_um=0.8,
        nc=0.84,
        chromatin=1.45,
        grain_um=0.7,
        clumping=0.4,
        cyto_rgb=_SKY_BLUE,
        cyto_density=1.0,
        boundary=0.03,
    ),
    "MMZ": Morph(
        diam_um=12.5,
        nc=0.58,
        nucleus="kidney",
        eccentric=0.15,
        chromatin=1.2,
        clumping=0.35,
        cyto_rgb=_PALE_PINK,
        granules=60,
        granule_um=0.3,
        granule_rgb=_NEUTRO_GRAN,
    ),
    "MOB": Morph(
        diam_um=17.0,
        diam_sd_um=1.8,
        nc=0.72,
        chromatin=0.75,
        grain_um=0.3,
        clumping=0.12,
        nucleoli=(1, 2),
        cyto_rgb=(150, 160, 215),
        cyto_density=1.0,
        boundary=0.06,
    ),
    "MON": Morph(
        diam_um=16.0,
        diam_sd_um=1.8,
        nc=0.58,
        nucleus="kidney",
        chromatin=0.95,
        grain_um=0.45,
        clumping=0.25,
        cyto_rgb=_GREY_BLUE,
        granules=25,
        granule_um=0.3,
        granule_rgb=(175, 130, 180),
        vacuoles=5,
        boundary=0.08,
    ),
    "MYB": Morph(
        diam_um=14.0,
        nc=0.55,
        eccentric=0.3,
        chromatin=1.05,
        clumping=0.3,
        cyto_rgb=(215, 198, 222),
        granules=90,
        granule_um=0.35,
        granule_rgb=(170, 110, 165),
        hof=True,
    ),
    "MYO": _MYELOBLAST,
    "NGB": Morph(
        diam_um=12.0,
        nc=0.62,
        nucleus="band",
        chromatin=1.3,
        clumping=0.35,
        cyto_rgb=_PALE_PINK,
        granules=70,
        granule_um=0.3,
        granule_rgb=_NEUTRO_GRAN,
    ),
    "NGS": Morph(
        diam_um=12.0,
        nc=0.66,
        nucleus="lobed",
        lobes=(3, 5),
        chromatin=1.35,
        clumping=0.35,
        cyto_rgb=_PALE_PINK,
        granules=70,
        granule_um=0.3,
        granule_rgb=_NEUTRO_GRAN,
    ),
    "OTH": Morph(
        diam_um=20.0,
        diam_sd_um=3.0,
        nc=0.65,
        nucleus="lobed",
        lobes=(4, 6),
        chromatin=1.0,
        cyto_rgb=(215, 190, 222),
        granules=120,
        granule_um=0.3,
        granule_rgb=(165, 105, 170),
        boundary=0.1,
    ),
    "PEB": Morph(
        diam_um=16.0,
        diam_sd_um=1.5,
        nc=0.78,
        chromatin=1.0,
        grain_um=0.45,
        clumping=0.25,
        nucleoli=(1, 2),
        cyto_rgb=(105, 128, 212),
        cyto_density=1.35,
    ),
    "PLM": Morph(
        diam_um=12.5,
        nc=0.5,
        eccentric=0.5,
        chromatin=1.3,
        grain_um=0.8,
        clumping=0.6,
        cyto_rgb=(115, 140, 215),
        cyto_density=1.25,
        hof=True,
    ),
    "PMB": replace(
        _PROMYELOCYTE, nucleus="lobed", lobes=(2, 2), granules=110, auer_p=0.3
    ),
    "PMO": _PROMYELOCYTE,
}

#: Class drawn for "not identifiable" cells: another class, out of focus.
NIF_BLUR_UM = 1.3

#: Stains of the three synthetic datasets (their µm/px is in ``synth``).
STAINS: dict[str, Stain] = {
    "lmu": Stain(
        bg_rgb=(234, 222, 229),
        rbc_rgb=(226, 160, 172),
        rbc_count=(3, 7),
        od_scale=(1.0, 1.0, 1.0),
        noise=1.5,
    ),
    "mll_helmholtz": Stain(
        bg_rgb=(226, 226, 234),
        rbc_rgb=(216, 172, 192),
        rbc_count=(2, 5),
        od_scale=(1.15, 1.05, 1.15),
        noise=3.5,
        blur_px=0.6,
    ),
    "bm": Stain(
        bg_rgb=(206, 182, 228),
        rbc_rgb=(222, 200, 216),
        rbc_count=(4, 9),
        od_scale=(1.2, 1.3, 0.9),
        noise=2.5,
    ),
}

#: ``mll_helmholtz`` differential-count columns and the class drawn for each
#: (``BLAST`` = the subtype's blast, see :func:`subtype_morphs`).
MLL_PB_CLASSES: dict[str, str] = {
    "pb_myeloblast": "BLAST",
    "pb_promyelocyte": "PMO",
    "pb_myelocyte": "MYB",
    "pb_metamyelocyte": "MMZ",
    "pb_neutrophil_band": "NGB",
    "pb_neutrophil_segmented": "NGS",
    "pb_eosinophil": "EOS",
    "pb_basophil": "BAS",
    "pb_monocyte": "MON",
    "pb_lymph_typ": "LYT",
    "pb_lymph_atyp_react": "LYA",
    "pb_other": "KSC",
}


def subtype_morphs(bag_label: str) -> dict[str, Morph]:
    """Return the class → morphology table for the patients of one AML subtype.

    Each subtype changes its blasts (``BLAST``) and a few other cells the way the
    literature describes them, so that a bag of cells carries its subtype.

    Args:
        bag_label: ``control``, ``CBFB_MYH11``, ``NPM1``, ``PML_RARA`` or
            ``RUNX1_RUNX1T1``.

    Returns:
        A copy of :data:`MORPHS` with ``BLAST`` added and the subtype's changes.

    Examples:
        >>> subtype_morphs("NPM1")["BLAST"].nucleus
        'cup'
    """
    table = dict(MORPHS)
    blast = _MYELOBLAST
    if bag_label == "NPM1":  # cup-like nuclear invagination, few granules
        blast = replace(blast, nucleus="cup", granules=2, cyto_rgb=(160, 172, 222))
    elif bag_label == "CBFB_MYH11":  # myelomonocytic blasts, abnormal eosinophils
        blast = replace(
            blast,
            diam_um=16.0,
            nc=0.7,
            nucleus="kidney",
            cyto_rgb=_GREY_BLUE,
            vacuoles=3,
            granules=12,
            granule_rgb=(175, 130, 180),
        )
        table["EOS"] = MORPHS["ABE"]
    elif bag_label == "PML_RARA":  # abnormal hypergranular promyelocytes, Auer rods
        blast = replace(
            _PROMYELOCYTE,
            nucleus="lobed",
            lobes=(2, 2),
            granules=150,
            granules_over_nucleus=True,
            auer_p=0.4,
            auer_n=(1, 6),
        )
        table["PMO"] = blast
    elif bag_label == "RUNX1_RUNX1T1":  # salmon cytoplasm, large granules, hof, rods
        blast = replace(
            blast,
            diam_um=15.0,
            nc=0.68,
            eccentric=0.25,
            cyto_rgb=(232, 190, 182),
            granules=14,
            granule_um=0.9,
            granule_rgb=(150, 60, 110),
            hof=True,
            auer_p=0.3,
        )
    table["BLAST"] = blast
    return table
