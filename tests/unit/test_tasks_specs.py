"""The task registry and prompts: tags, Falcon's templates verbatim, reading prompts and user turns back."""

import subprocess
import sys

import pytest

import tiercel.tasks as T
from tiercel.errors import TaskError
from tiercel.tasks.results import Boxes, Caption, Count, Label, Polygons, Quads

# FALCON.md's table, copied by hand (`\n` is a newline). Regions below: image 1000 x 500 px, so x bins are
# pixels and y bins are pixels * 2.
BOX, QUAD = [100, 50, 300, 150], [[100, 50], [300, 50], [300, 150], [100, 150]]
POLY = [[10, 10], [20, 10], [20, 20]]
PROMPTS = {
    "IMG_CLS": ({}, "Classify the image.\nUse one or a few words."),
    "IMG_CAP": ({}, "Describe the image."),
    "IMG_CAP_DETAILED": ({}, "Describe the image in detail."),
    "IMG_VQA": ({"text": "Is there a bridge?"}, "Is there a bridge?"),
    "IMG_CT": ({"text": "ships"}, "Count the number of ships."),
    "REG_CLS_HBB": ({"region": BOX}, "Classify the region of <box><100><100><300><300></box>.\nUse one or a few words."),
    "REG_CLS_OBB": ({"region": QUAD},
                    "Classify the region of <quad><100><100><300><100><300><300><100><300></quad>.\nUse one or a few words."),
    "REG_DET_HBB": ({"text": "airplane"}, "Detect all airplane in the image.\nUse horizontal bounding boxes."),
    "REG_DET_OBB": ({"text": "ship"}, "Detect all ship in the image.\nUse oriented bounding boxes."),
    "REG_VG": ({"text": "the red roof on the left"},
               "Detect an area that matches the description.\nthe red roof on the left\nUse horizontal bounding boxes."),
    "REG_CAP": ({"region": BOX}, "Describe the <box><100><100><300><300></box> in this image."),
    "PIX_CLS": ({"region": POLY}, "Classify the region of <poly><10><20><20><20><20><40></poly>.\nUse one or a few words."),
    "PIX_SEG": ({"text": "buildings"}, "Segment out buildings in the image."),
    "PIX_CHG": ({}, "Find changes in the two images."),
}  # fmt: skip
SIZE = (1000, 500)


def test_tags_in_falcon_order_with_their_facts():
    assert tuple(PROMPTS) == T.TAGS
    assert [T.get(t).number for t in T.TAGS] == list(range(1, 15))
    assert [T.get(t).level for t in T.TAGS] == ["image"] * 5 + ["region"] * 6 + ["pixel"] * 3
    assert [t for t in T.TAGS if T.get(t).n_images == 2] == ["PIX_CHG"]
    texts = {t: T.get(t).needs_text for t in T.TAGS if T.get(t).needs_text}
    assert texts == {"IMG_VQA": "question", "IMG_CT": "class", "REG_DET_HBB": "class", "REG_DET_OBB": "class",
                     "REG_VG": "description", "PIX_SEG": "class"}  # fmt: skip
    regions = {t: T.get(t).needs_region for t in T.TAGS if T.get(t).needs_region}
    assert regions == {"REG_CLS_HBB": "box", "REG_CLS_OBB": "quad", "REG_CAP": "box", "PIX_CLS": "polygon"}


def test_result_types_and_headlines():
    types = {t: T.get(t).result_type for t in T.TAGS}
    assert types["IMG_CLS"] is Label and types["IMG_VQA"] is Label and types["PIX_CLS"] is Label
    assert types["IMG_CT"] is Count and types["REG_CAP"] is Caption
    assert types["REG_DET_HBB"] is Boxes and types["REG_VG"] is Boxes and types["REG_DET_OBB"] is Quads
    assert types["PIX_SEG"] is Polygons and types["PIX_CHG"] is Polygons
    heads = {t: T.get(t).headline for t in T.TAGS}
    assert heads["IMG_CAP"] == heads["REG_CAP"] == "cider"
    assert heads["REG_DET_HBB"] == heads["REG_DET_OBB"] == "ap50"
    assert heads["REG_VG"] == "acc50" and heads["PIX_SEG"] == heads["PIX_CHG"] == "miou"
    assert heads["IMG_CLS"] == heads["IMG_CT"] == heads["IMG_VQA"] == "accuracy"


@pytest.mark.parametrize("name", ["REG_DET_HBB", "[REG_DET_HBB]", "reg_det_hbb", " [reg_det_hbb] "])
def test_get_accepts_spellings(name):
    assert T.get(name).tag == "REG_DET_HBB"


def test_unknown_tag_lists_the_valid_ones_in_one_line():
    with pytest.raises(TaskError) as err:
        T.get("REG_DET")
    message = str(err.value)
    assert "\n" not in message and "'REG_DET'" in message and ", ".join(T.TAGS) in message


@pytest.mark.parametrize("tag", list(PROMPTS))
def test_prompts_are_falcons_templates_verbatim(tag):
    fields, expected = PROMPTS[tag]
    assert T.get(tag).prompt(image_size=SIZE, **fields) == expected


@pytest.mark.parametrize("tag", list(PROMPTS))
def test_read_prompt_inverts_prompt(tag):
    fields, text = PROMPTS[tag]
    spec = T.get(tag)
    got = spec.read_prompt(text, SIZE)
    assert got["text"] == fields.get("text")
    region = fields.get("region")
    if region is None:
        assert got["region"] is None
    else:  # within one bin: 1 px in x, 0.5 px in y
        flat_in = [v for p in region for v in (p if isinstance(p, list) else [p])]
        flat_out = [v for p in got["region"] for v in (p if isinstance(p, list) else [p])]
        assert all(abs(a - b) <= 1 for a, b in zip(flat_in, flat_out)) and len(flat_in) == len(flat_out)


def test_read_prompt_is_tolerant():
    det = T.get("REG_DET_HBB")
    messy = "<image>\n[REG_DET_HBB]\ndetect all  storage tanks in the image.Use horizontal bounding boxes"
    assert det.read_prompt(messy, SIZE)["text"] == "storage tanks"
    assert det.read_prompt("Detect all cars in the image.\\nUse horizontal bounding boxes.", SIZE)["text"] == "cars"
    assert T.get("IMG_CT").read_prompt("Count the number of cars", None)["text"] == "cars"
    vg = T.get("REG_VG").read_prompt(PROMPTS["REG_VG"][1].replace("roof on", "roof.\non"), SIZE)
    assert vg["text"] == "the red roof.\non the left"  # a description may hold newlines and full stops
    assert det.read_prompt("What is this?", SIZE) == {"text": None, "region": None}
    # Off-template prompt: the region is still found; Falcon's <1000> clamps to the last bin.
    cls = T.get("REG_CLS_HBB").read_prompt("What is in <box><0><0><1000><1000></box>?", (1000, 1000))
    assert cls == {"text": None, "region": [0.5, 0.5, 999.5, 999.5]}
    assert T.get("REG_CAP").read_prompt("Describe the image.", SIZE) == {"text": None, "region": None}


def test_prompt_names_the_missing_field():
    with pytest.raises(TaskError, match="needs text"):
        T.get("REG_DET_HBB").prompt()
    with pytest.raises(TaskError, match="needs text"):
        T.get("IMG_CT").prompt(text="   ")
    with pytest.raises(TaskError, match="needs region"):
        T.get("REG_CAP").prompt(image_size=SIZE)
    with pytest.raises(TaskError, match="needs image_size"):
        T.get("REG_CLS_OBB").prompt(region=QUAD)
    with pytest.raises(TaskError, match=r"REG_CLS_OBB: region must be a quad \[\[x, y\] x 4\] in pixels \(got \["):
        T.get("REG_CLS_OBB").prompt(region=BOX, image_size=SIZE)
    with pytest.raises(TaskError, match=">= 3"):
        T.get("PIX_CLS").prompt(region=[[1, 2], [3, 4]], image_size=SIZE)
    with pytest.raises(TaskError, match="valid dialects"):
        T.get("IMG_CAP").prompt(dialect="geochat")


def test_florence_dialect_prompt():
    got = T.get("REG_CAP").prompt(region=BOX, image_size=SIZE, dialect="florence")
    assert got == "Describe the <box><loc_100><loc_100><loc_300><loc_300></box> in this image."
    assert T.get("REG_CAP").read_prompt(got, SIZE, dialect="florence")["region"] == [100.5, 50.25, 300.5, 150.25]


@pytest.mark.parametrize(
    "content, expected",
    [
        ("<image>\n[IMG_CAP]\nDescribe the image.", ("IMG_CAP", "Describe the image.")),
        ("[IMG_CLS]\nClassify the image.\nUse one or a few words.",
         ("IMG_CLS", "Classify the image.\nUse one or a few words.")),
        ("<image>\\n[REG_VG]\\nDetect an area that matches the description.\\na car\\nUse horizontal bounding boxes.",
         ("REG_VG", "Detect an area that matches the description.\na car\nUse horizontal bounding boxes.")),
        ("<image>\n<image>\n[pix_chg]\nFind changes in the two images.",
         ("PIX_CHG", "Find changes in the two images.")),
        ("<image>\nDescribe the image.", (None, "Describe the image.")),
        ("Describe the image.", (None, "Describe the image.")),
        ("<image>\n[grounding] where is the plane?", (None, "[grounding] where is the plane?")),
    ],
)  # fmt: skip
def test_split_user_turn(content, expected):
    assert T.split_user_turn(content) == expected


def test_average_headline_takes_each_tasks_headline():
    per_task = {
        "IMG_CLS": {"accuracy": 0.8, "macro_f1": 0.1},
        "[IMG_CAP]": {"cider": 0.3, "bleu4": 0.9},
        "REG_DET_HBB": {"ap50": 0.4, "ap50_iou_ranked": 0.99},
    }
    assert T.average_headline(per_task) == pytest.approx((0.8 + 0.3 + 0.4) / 3)
    with pytest.raises(TaskError, match="headline 'miou'"):
        T.average_headline({"PIX_SEG": {"dice": 0.5}})
    with pytest.raises(TaskError):
        T.average_headline({})


def test_tasks_import_no_heavy_dependencies():
    code = (
        "import sys, tiercel.tasks, tiercel.tasks.metrics\n"
        "bad = [m for m in ('torch', 'transformers', 'PIL') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
