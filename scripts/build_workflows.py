"""Write the example workflows/*.json from the node-definition snapshot; run it after node changes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from workflow_check import WORKFLOW_DIR, load_snapshot
from workflow_graph import Graph, Node

NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"
CHECKPOINT = "sd_xl_base_1.0.safetensors"
UNIID_WEIGHTS = "uniid_sdxl.safetensors"
FACE_NET = "uniid/glint360k_r100.pth"
SEED = 42
START_POS, START_SIZE = (380, 0), (350, 640)

MODELS_NOTE = """MODEL FILES (see README, 'Model layout'):
- ComfyUI/models/checkpoints/: any SDXL checkpoint (e.g. sd_xl_base_1.0.safetensors)
- ComfyUI/models/uniid/<folder>/: the official UniID release (Hugging Face pangly/UniID) as it \
comes, listed as '<folder>/' (or a single uniid_sdxl.safetensors)
- the IResNet-100 face net: inside the release folder, or ComfyUI/models/uniid/glint360k_r100.pth
- ComfyUI/models/insightface/models/buffalo_l/: only for the insightface detector
`python -m uniid_core.download --comfyui /path/to/ComfyUI` fetches the release and the detector \
packs into these folders and says where the rest goes.
After adding files, press R (refresh) so the dropdowns list them."""

BUNDLED_DETECTOR = """FACE DETECTOR: this graph uses mtcnn, which ships with the pack (no insightface, \
no download); the class word becomes 'person' unless you type one in UniID Encode Face.

To switch to insightface (the official detector; it reads gender, so class_word 'auto' gives \
'man'/'woman'): `pip install insightface`, unzip buffalo_l.zip into \
ComfyUI/models/insightface/models/buffalo_l/, press R, then """
"""The detector note's start: what the graph uses and how to install insightface (then: where to set it)."""

DETECTOR_NOTE = BUNDLED_DETECTOR + """set backend = insightface and \
insightface_model = buffalo_l in 'UniID Face Detector Loader'.
pre-aligned: your images already are 112x112 ArcFace crops.
provider: CPU works everywhere; CUDA needs onnxruntime-gpu instead of onnxruntime."""

ALL_IN_ONE_DETECTOR_NOTE = BUNDLED_DETECTOR + """set backend = insightface in \
'UniID Loader (all-in-one)' (buffalo_l at det size 320 on the CPU, as the official script).
Another pack, det size or a CUDA provider: use the three separate loaders (see uniid_advanced_schedule)."""

OFFICIAL_DETECTOR_NOTE = """FACE DETECTOR: this graph uses insightface buffalo_l at det size 320, as the \
official script does (it is part of what this workflow reproduces). It needs `pip install insightface` \
and buffalo_l.zip unzipped into ComfyUI/models/insightface/models/buffalo_l/ (press R afterwards).
Without insightface, set backend = mtcnn (bundled, no download): the graph then runs, but the aligned \
face, and so the image, differ slightly from the official ones.
provider: CPU works everywhere; CUDA needs onnxruntime-gpu instead of onnxruntime."""


BASIC_NOTE = """UniID BASIC: one reference photo -> a portrait of that person.

1. Load an SDXL checkpoint; pick the UniID weights and the face net in 'UniID Loader (all-in-one)'.
2. Load a clear, frontal photo in 'Reference photo'.
3. Write the prompt; keep '<class word>' where the person goes (it becomes man/woman/person).
4. Queue. 'Aligned faces' shows the face that was used.

UniID Apply (simple) at strength 1.0 is the official schedule (merge step 5 of 30, text 0.5 -> 1.8, \
adapter 0.8 -> 1.2); CFG 7.5, 1024x1024. Lower strength = more room for the prompt, higher = more \
likeness, 0 = identity off. Every control: the template uniid_advanced_schedule (UniID Apply)."""

SIMILARITY_NOTE = """SCORE WHAT WAS GENERATED: four images of the person, ranked by likeness.

UniID Face Similarity finds the face in every generated image and compares it with the identity \
(cosine similarity of the face net's embeddings; 1 = same direction). 'Scores' shows the table, best \
first; 'Ranked' the images best first; the best one is saved. An image without a face scores NaN and \
is listed last; it does not stop the run.

Independent judge: put insightface's buffalo_l into ComfyUI/models/insightface/models/, press R, \
pick models/buffalo_l/w600k_r50.onnx as scorer and connect 'Reference photo' to reference_photos \
(needs onnxruntime). Compare scores of one scorer only."""

MULTI_NOTE = """SEVERAL REFERENCE PHOTOS of the SAME person -> one identity.

Image Batch joins the photos (different sizes are resized to the first one's). Add more with further \
Image Batch nodes.

combine = mean_features averages the face features before UniID (default); mean_tokens runs UniID \
per photo and averages its tokens.
on_no_face = skip leaves out photos where no face is found (error stops the run)."""

ADVANCED_NOTE = """SCHEDULE CONTROLS of UniID Apply

- merge_step: from this sampling step on the 'after' scales apply (official 5 of 30). Later = more \
freedom for the prompt's layout; 0 = 'after' from the start.
- text_scale_before/after: weight of the identity tokens in the prompt (0.5 / 1.8).
- adapter_scale_before/after: weight of the adapter attention (0.8 / 1.2).
- rescale: normalized (official) scales the adapter to the text attention's size; add is a plain \
sum.
- start/end_percent: the part of sampling where the identity is active at all.

More identity: raise the 'after' scales. More prompt control: lower them or raise merge_step.
face_selection = index picks one face of a group photo (0 = leftmost, -1 = rightmost)."""

SAVE_NOTE = """SAVE AN IDENTITY (one queue press)

The photo is encoded once; 'UniID Save Identity' writes it to identities/my_person.safetensors in \
your uniid model folder (ComfyUI/models/uniid, or the first 'uniid:' folder of \
extra_model_paths.yaml), and the same identity makes a picture right away.

Then open the template uniid_load_identity to reuse it without the photo or the face models \
(press R first so the new file is listed)."""

LOAD_NOTE = """REUSE A SAVED IDENTITY

'UniID Load Identity' lists identities/*.safetensors of every uniid model folder (and .safetensors \
files in ComfyUI's input folder). No photo, face net or face detector is needed.

Save one first with the template uniid_save_identity (then press R). An identity only works with \
the UniID weights it was encoded with (checked)."""

TWO_PEOPLE_NOTE = """TWO PEOPLE IN ONE PICTURE

Each person: own photo -> own identity -> own UniID Apply with a mask (left / right half of the \
1216x832 image). The adapter of each identity acts only inside its mask; its prompt (with its \
identity tokens) is limited to the same mask by Conditioning (Set Mask). The scene prompt is \
appended to each person's prompt (Conditioning Concat after UniID Apply), so every prompt row of the \
picture carries its person's identity; a separate unmarked scene prompt would get UniID's zero-face \
tokens, like the negative, and weaken both faces.

Change the split by editing the masks (x of Mask person B = where the right half starts). Keep mask \
size = image size."""

PER_BLOCK_NOTE = """IDENTITY STRENGTH PER UNET BLOCK

'UniID Rescaler Per Block' multiplies UniID Apply's adapter scales (before and after the merge step) \
in each part of the UNet: input_blocks (down), middle_block and output_blocks (up), then single \
cross-attention layers in 'layers', e.g. '0-3:0.5, 60:0' (SDXL has 70, numbered in the official \
order: input 0-23, output 24-59, middle 60-69; a later entry wins).
1 = unchanged (all 1 gives exactly the image without this node), 0 = no identity in that part.

'UniID Rescaler' picks the strategy being weighted: normalized (official), add, or one another pack \
registers (its parameters go in 'params'). Connected to Apply's 'rescaler' input, the chain replaces \
Apply's 'rescale' choice. Compare settings with a fixed seed."""

IDENTITY_BATCH_NOTE = """A DIFFERENT PERSON IN EVERY IMAGE of one batch (an identity batch).

UniID Apply gives identity i to image i of the latent batch (its adapter and its prompt tokens).
- Persons A and B: their photos joined with Image Batch and encoded with combine = per_image: one \
identity per photo, in batch order.
- Person C: several photos of the same person (combine = mean_features) still make one identity.
- UniID Identity Batch joins them: [A, B, C]. Its count sets Empty Latent Image's batch_size, so the \
batch always fits (another size stops the sampler with a message). Chain another UniID Identity Batch \
for a fourth person, or feed it saved identities (UniID Load Identity).

The prompt is shared: <class word> becomes man/woman only when every face agrees (insightface), else \
person."""

NEGATIVE_IDENTITY_NOTE = """A NEGATIVE IDENTITY: steer away from a face.

'Face to avoid' is encoded like the reference and connected to UniID Apply's negative_identity. Its \
adapter tokens go where UniID otherwise puts zero-face tokens (the negative prompt's rows), so \
guidance pushes the picture away from that face: a look-alike, or the reference photo itself to move \
away from its expression, lighting or make-up.

Disconnect negative_identity for the official behaviour (zero-face tokens). CFG and the adapter \
scales set how strongly it acts. Only its adapter tokens are used; the negative prompt stays as \
written."""

OFFICIAL_PROMPT = "A photo of a <class word> eating bread in front of the Eiffel Tower"
OFFICIAL_NOTE = """THE OFFICIAL SCRIPT'S IMAGE (UniID inference.py) inside ComfyUI.

Its settings: 30 steps, CFG 7.5, 1024x1024, its negative prompt, merge step 5 with text 0.5 -> 1.8 \
and adapter 0.8 -> 1.2 (normalized), insightface buffalo_l at det_size 320, most confident face.
- UniID Official Schedule: diffusers' sigmas (leading spacing, steps_offset 1). scheduler: euler \
for SDXL base; ddim for RealVisXL V5.0 (its repo ships DDIM). Keep the sampler at euler for both.
- UniID Official Noise: the seed's noise, scaled as diffusers scales it. generator cuda draws it as \
the script does on an NVIDIA GPU; cpu runs anywhere but is other noise than the script's GPU run.
Use the checkpoint, photo, prompt and seed you gave the script.

How close: bit-level only on the same device, dtype and kernels (checked on CPU, float32, against \
the official code's outputs); on another GPU stack it matches visually, not bit for bit (ComfyUI \
keeps the latents in float32, the script in float16)."""


class Common:
    """The nodes every UniID workflow shares: checkpoint, UniID loaders, negative prompt, sampler, output.

    Face models (face net + detector, the bundled mtcnn unless another is named) only where faces are encoded.
    """

    def __init__(self, graph: Graph, detector: str = "mtcnn", width: int = 1024, height: int = 1024,
                 faces: bool = True, simple: bool = False, **detector_widgets: object) -> None:
        self.g = graph
        self.faces = faces
        self.simple = simple
        self.ckpt = graph.add("CheckpointLoaderSimple", (0, 0), ckpt_name=CHECKPOINT)
        if simple:
            self.uniid = graph.add("UniIDLoaderAllInOne", (0, 180), uniid_name=UNIID_WEIGHTS,
                                   face_net_name=FACE_NET, backend=detector)
            self.face_net = self.detector = self.uniid
        else:
            self.uniid = graph.add("UniIDLoader", (0, 180), uniid_name=UNIID_WEIGHTS, dtype="auto")
        if faces and not simple:
            self.face_net = graph.add("UniIDFaceNetLoader", (0, 330), face_net_name=FACE_NET)
            self.detector = graph.add("UniIDFaceDetectorLoader", (0, 450), backend=detector,
                                      insightface_model="buffalo_l", provider="CPU", **detector_widgets)
        self.negative = graph.add("CLIPTextEncode", (760, 250), title="Negative prompt", node_width=360,
                                  text=NEGATIVE)
        graph.connect(self.ckpt, "CLIP", self.negative, "clip")
        self.size = (width, height)

    def notes(self, start: str) -> None:
        """The 'Start here' note, the model-files note and, where faces are encoded, the detector note."""
        self.g.note(start, START_POS, START_SIZE, "Start here")
        self.g.note(MODELS_NOTE, (-480, 0), (440, 340), "Model files")
        if self.faces:
            note = ALL_IN_ONE_DETECTOR_NOTE if self.simple else DETECTOR_NOTE
            self.g.note(note, (-480, 380), (440, 280), "Face detector")

    def generate(self, identity_from: Node, text: str, prefix: str, batch: int = 1,
                 rescaler_from: Node | None = None, **apply_widgets: object) -> tuple[Node, list[Node]]:
        """Prompt with <class word> -> UniID Apply on the checkpoint -> sampler and output; one identity.

        Returns the Apply node and the sampling nodes (latent, sampler, decode, save)."""
        positive = self.prompt(text, (760, 0), identity_from)
        apply = self.apply((self.ckpt, "MODEL"), (positive, "conditioning"), identity_from, (1160, 0),
                           rescaler_from=rescaler_from, **apply_widgets)
        return apply, self.sample((apply, "model"), (apply, "positive"), prefix, batch=batch)

    def encode(self, image: Node, pos: tuple[float, float], title: str | None = None,
               **widgets: object) -> Node:
        """A UniID Encode Face node wired to the shared loaders and the given IMAGE source."""
        node = self.g.add("UniIDEncodeFace", pos, title=title, **widgets)
        self.g.connect(self.uniid, "uniid", node, "uniid")
        self.g.connect(self.face_net, "face_net", node, "face_net")
        self.g.connect(self.detector, "face_detector", node, "face_detector")
        self.g.connect(image, "IMAGE", node, "image")
        return node

    def prompt(self, text: str, pos: tuple[float, float], class_word_from: Node | None = None) -> Node:
        """A UniID Text Encode node (prompt with <class word>) on the checkpoint's CLIP."""
        node = self.g.add("UniIDTextEncode", pos, node_width=360, text=text, class_word="person")
        self.g.connect(self.ckpt, "CLIP", node, "clip")
        if class_word_from is not None:
            self.g.connect(class_word_from, "class_word", node, "class_word")
        return node

    def apply(self, model_from: tuple[Node, str], positive_from: tuple[Node, str], identity_from: Node,
              pos: tuple[float, float], mask_from: Node | None = None, rescaler_from: Node | None = None,
              **widgets: object) -> Node:
        """A UniID Apply node (the simple one in a simple graph): MODEL, positive CONDITIONING and identity
        in; patched versions out."""
        node = self.g.add("UniIDApplySimple" if self.simple else "UniIDApply", pos, **widgets)
        self.g.connect(model_from[0], model_from[1], node, "model")
        self.g.connect(positive_from[0], positive_from[1], node, "positive")
        self.g.connect(self.uniid, "uniid", node, "uniid")
        self.g.connect(identity_from, "identity", node, "identity")
        self.g.connect(self.ckpt, "CLIP", node, "clip")
        if mask_from is not None:
            self.g.connect(mask_from, "MASK", node, "mask")
        if rescaler_from is not None:
            self.g.connect(rescaler_from, "rescaler", node, "rescaler")
        return node

    def sample(self, model_from: tuple[Node, str], positive_from: tuple[Node, str], prefix: str,
               x: float = 1560, steps: int = 30, batch: int = 1) -> list[Node]:
        """Empty latent + KSampler (official 30 steps, CFG 7.5) -> VAE Decode -> Save Image."""
        latent = self.g.add("EmptyLatentImage", (x, 0), width=self.size[0], height=self.size[1],
                            batch_size=batch)
        sampler = self.g.add("KSampler", (x, 200), seed=SEED, steps=steps, cfg=7.5, sampler_name="euler",
                             scheduler="normal", denoise=1.0)
        self.g.connect(model_from[0], model_from[1], sampler, "model")
        self.g.connect(positive_from[0], positive_from[1], sampler, "positive")
        self.g.connect(self.negative, "CONDITIONING", sampler, "negative")
        self.g.connect(latent, "LATENT", sampler, "latent_image")
        decode = self.g.add("VAEDecode", (x + 360, 0), node_width=200)
        self.g.connect(sampler, "LATENT", decode, "samples")
        self.g.connect(self.ckpt, "VAE", decode, "vae")
        save = self.g.add("SaveImage", (x + 360, 120), node_width=480, filename_prefix=prefix)
        self.g.connect(decode, "IMAGE", save, "images")
        return [latent, sampler, decode, save]

    def preview(self, encode: Node, pos: tuple[float, float]) -> Node:
        """Preview of the aligned 112x112 face crops (check that the right face was found)."""
        node = self.g.add("PreviewImage", pos, title="Aligned faces (check these)", node_width=260)
        self.g.connect(encode, "aligned_faces", node, "images")
        return node


def basic(schema: dict) -> dict:
    """One photo -> portrait, on the simple nodes (all-in-one loader, UniID Apply (simple))."""
    g = Graph(schema)
    c = Common(g, simple=True)
    photo = g.add("LoadImage", (0, 720), title="Reference photo", image="face.png")
    encode = c.encode(photo, (380, 720))
    c.preview(encode, (760, 720))
    c.generate(encode, "a photo of a <class word>, portrait, natural light, detailed face", "uniid_basic")
    c.notes(BASIC_NOTE)
    g.group("UniID models", [c.uniid], "green")
    g.group("Identity from a photo", [photo, encode], "blue")
    return g.to_json("basic")


def face_similarity(schema: dict) -> dict:
    """Generate a batch of four, score every image against the identity, rank them, keep the best."""
    g = Graph(schema)
    c = Common(g, simple=True)
    photo = g.add("LoadImage", (0, 720), title="Reference photo", image="face.png")
    encode = c.encode(photo, (380, 720))
    c.preview(encode, (760, 720))
    decode = c.generate(encode, "a photo of a <class word> at the seaside, summer light", "uniid_batch",
                        batch=4)[1][2]
    x, y = 1560, 600
    score = g.add("UniIDFaceSimilarity", (x, y), node_width=360)
    g.connect(decode, "IMAGE", score, "images")
    g.connect(c.detector, "face_detector", score, "face_detector")
    g.connect(c.face_net, "face_net", score, "face_net")
    g.connect(encode, "identity", score, "identity")
    table = g.add("PreviewAny", (x + 400, y), title="Scores", node_width=480)
    g.connect(score, "table", table, "source")
    ranked = g.add("PreviewImage", (x + 400, y + 260), title="Ranked, best first", node_width=480)
    g.connect(score, "images_by_similarity", ranked, "images")
    best = g.add("SaveImage", (x + 900, y + 260), title="Best image", node_width=400,
                 filename_prefix="uniid_best")
    g.connect(score, "best_image", best, "images")
    c.notes(SIMILARITY_NOTE)
    g.group("UniID models", [c.uniid], "green")
    g.group("Identity from a photo", [photo, encode], "blue")
    g.group("Score the batch", [score, table, ranked, best], "purple")
    return g.to_json("face_similarity")


def multi_reference(schema: dict) -> dict:
    """Several photos of one person -> one identity."""
    g = Graph(schema)
    c = Common(g)
    photos = [g.add("LoadImage", (0, 720 + 380 * i), title=f"Reference photo {i + 1}", image=name)
              for i, name in enumerate(("face.png", "face_2.png", "face_3.png"))]
    batch1 = g.add("ImageBatch", (380, 1000), node_width=200)
    g.connect(photos[0], "IMAGE", batch1, "image1")
    g.connect(photos[1], "IMAGE", batch1, "image2")
    batch2 = g.add("ImageBatch", (380, 1160), node_width=200)
    g.connect(batch1, "IMAGE", batch2, "image1")
    g.connect(photos[2], "IMAGE", batch2, "image2")
    encode = c.encode(batch2, (760, 720), combine="mean_features", on_no_face="skip")
    c.preview(encode, (1160, 720))
    c.generate(encode, "a photo of a <class word> reading in a cosy cafe, warm light",
               "uniid_multi_reference")
    c.notes(MULTI_NOTE)
    g.group("Reference photos", [*photos, batch1, batch2], "blue")
    return g.to_json("multi_reference")


def advanced_schedule(schema: dict) -> dict:
    """Every schedule control of UniID Apply (bundled mtcnn detector, one face picked by index)."""
    g = Graph(schema)
    c = Common(g)
    photo = g.add("LoadImage", (0, 720), title="Reference photo", image="face.png")
    encode = c.encode(photo, (380, 720), face_selection="index", face_index=0, class_word="auto")
    c.preview(encode, (760, 720))
    c.generate(encode, "a <class word> as an astronaut on the moon, cinematic lighting", "uniid_advanced",
               merge_step=8, text_scale_before=0.4, text_scale_after=1.6, adapter_scale_before=0.6,
               adapter_scale_after=1.0, rescale="normalized", start_percent=0.0, end_percent=1.0)
    c.notes(ADVANCED_NOTE)
    return g.to_json("advanced_schedule")


def per_block(schema: dict) -> dict:
    """UniID Rescaler -> UniID Rescaler Per Block -> UniID Apply's rescaler input (bundled mtcnn detector)."""
    g = Graph(schema)
    c = Common(g)
    photo = g.add("LoadImage", (0, 720), title="Reference photo", image="face.png")
    encode = c.encode(photo, (380, 720))
    c.preview(encode, (760, 720))
    strategy = g.add("UniIDRescaler", (1160, 720), strategy="normalized", params="")
    weights = g.add("UniIDRescalerPerBlock", (1160, 900), input_blocks=1.0, middle_block=1.0,
                    output_blocks=0.7, layers="")
    g.connect(strategy, "rescaler", weights, "rescaler")
    c.generate(encode, "a photo of a <class word> in a sunlit library, portrait", "uniid_per_block",
               rescaler_from=weights)
    c.notes(PER_BLOCK_NOTE)
    g.group("Rescaler", [strategy, weights], "yellow")
    return g.to_json("per_block")


def save_identity_workflow(schema: dict) -> dict:
    """Encode a photo once, save the identity, and generate with it in the same run."""
    g = Graph(schema)
    c = Common(g)
    photo = g.add("LoadImage", (0, 720), title="Reference photo", image="face.png")
    encode = c.encode(photo, (380, 720))
    save = g.add("UniIDSaveIdentity", (380, 1040), name="my_person", overwrite=True)
    g.connect(encode, "identity", save, "identity")
    c.generate(encode, "a photo of a <class word> hiking in the mountains", "uniid_save_identity")
    c.notes(SAVE_NOTE)
    g.group("Encode and save", [photo, encode, save], "blue")
    return g.to_json("save_identity")


def load_identity_workflow(schema: dict) -> dict:
    """Generate from a saved identity: no photo, face net or face detector."""
    g = Graph(schema)
    c = Common(g, faces=False)
    load = g.add("UniIDLoadIdentity", (0, 430), identity_file="identities/my_person.safetensors")
    c.generate(load, "a photo of a <class word> hiking in the mountains", "uniid_load_identity")
    c.notes(LOAD_NOTE)
    g.group("Saved identity", [load], "purple")
    return g.to_json("load_identity")


def two_people_masks(schema: dict) -> dict:
    """Two identities in one picture: each one's adapter and prompt limited to its half by a mask."""
    width, height = 1216, 832
    g = Graph(schema)
    c = Common(g, width=width, height=height)
    photos = [g.add("LoadImage", (0, 720 + 380 * i), title=f"Person {'AB'[i]} photo", image=name)
              for i, name in enumerate(("person_a.png", "person_b.png"))]
    encodes = [c.encode(photo, (380, 720 + 380 * i)) for i, photo in enumerate(photos)]
    empty = g.add("SolidMask", (0, 1560), title="Empty canvas mask", value=0.0, width=width, height=height)
    half = g.add("SolidMask", (0, 1720), title="Half-width block", value=1.0, width=width // 2, height=height)
    masks = []
    for i, x in enumerate((0, width // 2)):
        mask = g.add("MaskComposite", (380, 1560 + 200 * i), title=f"Mask person {'AB'[i]}", x=x, y=0,
                     operation="add")
        g.connect(empty, "MASK", mask, "destination")
        g.connect(half, "MASK", mask, "source")
        masks.append(mask)
    scene = g.add("CLIPTextEncode", (760, 0), title="Scene prompt", node_width=360,
                  text="two friends standing side by side in a sunny park, photo")
    g.connect(c.ckpt, "CLIP", scene, "clip")
    model: tuple[Node, str] = (c.ckpt, "MODEL")
    combined: tuple[Node, str] | None = None
    for i, (encode, mask) in enumerate(zip(encodes, masks, strict=True)):
        side = ("on the left", "on the right")[i]
        prompt = c.prompt(f"a photo of a <class word> {side}", (760, 720 + 380 * i), encode)
        region = g.add("ConditioningSetMask", (1160, 880 + 220 * i), strength=1.0, set_cond_area="default")
        g.connect(prompt, "conditioning", region, "conditioning")
        g.connect(mask, "MASK", region, "mask")
        apply = c.apply(model, (region, "CONDITIONING"), encode, (1160 + 400 * i, 0), mask_from=mask)
        model = (apply, "model")
        joined = g.add("ConditioningConcat", (1960, 520 + 120 * i), title=f"Person {'AB'[i]} + scene",
                       node_width=240)
        g.connect(apply, "positive", joined, "conditioning_to")
        g.connect(scene, "CONDITIONING", joined, "conditioning_from")
        if combined is None:
            combined = (joined, "CONDITIONING")
            continue
        merge = g.add("ConditioningCombine", (1960, 760), node_width=240)
        g.connect(combined[0], combined[1], merge, "conditioning_1")
        g.connect(joined, "CONDITIONING", merge, "conditioning_2")
        combined = (merge, "CONDITIONING")
    c.sample(model, combined, "uniid_two_people", x=2300)
    c.notes(TWO_PEOPLE_NOTE)
    g.group("Masks", [empty, half, *masks], "yellow")
    return g.to_json("two_people_masks")


def identity_batch(schema: dict) -> dict:
    """Three people in one batch of three images: per-photo identities plus a multi-photo identity."""
    g = Graph(schema)
    c = Common(g)
    photos = [g.add("LoadImage", (0, 720 + 380 * i + 140 * (i // 2)), title=title, image=name)
              for i, (title, name) in enumerate((("Person A photo", "person_a.png"),
                                                 ("Person B photo", "person_b.png"),
                                                 ("Person C photo 1", "person_c.png"),
                                                 ("Person C photo 2", "person_c_2.png")))]
    pairs = []
    for i in range(2):
        pair = g.add("ImageBatch", (380, 1000 + 900 * i), node_width=200)
        g.connect(photos[2 * i], "IMAGE", pair, "image1")
        g.connect(photos[2 * i + 1], "IMAGE", pair, "image2")
        pairs.append(pair)
    per_photo = c.encode(pairs[0], (760, 720), title="Encode A, B (per_image)", combine="per_image")
    person_c = c.encode(pairs[1], (760, 1620), title="Encode C (several photos)", combine="mean_features")
    batch = g.add("UniIDIdentityBatch", (1160, 720), node_width=280)
    g.connect(per_photo, "identity", batch, "identity_1")
    g.connect(person_c, "identity", batch, "identity_2")
    c.preview(per_photo, (1160, 920))
    positive = c.prompt("a photo of a <class word>, portrait, natural light, detailed face", (760, 0), batch)
    apply = c.apply((c.ckpt, "MODEL"), (positive, "conditioning"), batch, (1160, 0))
    latent = c.sample((apply, "model"), (apply, "positive"), "uniid_identity_batch")[0]
    g.connect(batch, "count", latent, "batch_size")
    c.notes(IDENTITY_BATCH_NOTE)
    g.group("Persons A and B: one identity per photo", [photos[0], photos[1], pairs[0], per_photo], "blue")
    g.group("Person C: several photos, one identity", [photos[2], photos[3], pairs[1], person_c], "purple")
    return g.to_json("identity_batch")


def negative_identity(schema: dict) -> dict:
    """One reference photo, and a second face whose adapter tokens go on the negative rows."""
    g = Graph(schema)
    c = Common(g)
    photo = g.add("LoadImage", (0, 720), title="Reference photo", image="face.png")
    encode = c.encode(photo, (380, 720))
    c.preview(encode, (760, 720))
    avoid = g.add("LoadImage", (0, 1180), title="Face to avoid", image="face_to_avoid.png")
    avoid_encode = c.encode(avoid, (380, 1180), title="Encode the face to avoid")
    apply, _ = c.generate(encode, "a photo of a <class word>, portrait, natural light, detailed face",
                          "uniid_negative_identity")
    g.connect(avoid_encode, "identity", apply, "negative_identity")
    c.notes(NEGATIVE_IDENTITY_NOTE)
    g.group("Identity from a photo", [photo, encode], "blue")
    g.group("Negative identity", [avoid, avoid_encode], "red")
    return g.to_json("negative_identity")


def official_settings(schema: dict) -> dict:
    """The official inference.py's settings, schedule and first noise (SamplerCustomAdvanced)."""
    g = Graph(schema)
    c = Common(g, detector="insightface", det_size=320)
    photo = g.add("LoadImage", (0, 720), title="Reference photo", image="face.png")
    encode = c.encode(photo, (380, 720), face_selection="score", class_word="auto")
    c.preview(encode, (760, 720))
    positive = c.prompt(OFFICIAL_PROMPT, (760, 0), encode)
    apply = c.apply((c.ckpt, "MODEL"), (positive, "conditioning"), encode, (1160, 0), merge_step=5,
                    text_scale_before=0.5, text_scale_after=1.8, adapter_scale_before=0.8,
                    adapter_scale_after=1.2, rescale="normalized", start_percent=0.0, end_percent=1.0)
    x = 1560
    schedule = g.add("UniIDOfficialSchedule", (x, 0), steps=30, scheduler="euler")
    g.connect(apply, "model", schedule, "model")
    noise = g.add("UniIDOfficialNoise", (x, 160), noise_seed=SEED, generator="cuda")
    g.connect(apply, "model", noise, "model")
    g.connect(schedule, "sigmas", noise, "sigmas")
    guider = g.add("CFGGuider", (x, 360), cfg=7.5)
    g.connect(apply, "model", guider, "model")
    g.connect(apply, "positive", guider, "positive")
    g.connect(c.negative, "CONDITIONING", guider, "negative")
    sampler = g.add("KSamplerSelect", (x, 520), sampler_name="euler")
    latent = g.add("EmptyLatentImage", (x, 640), width=1024, height=1024, batch_size=1)
    sample = g.add("SamplerCustomAdvanced", (x + 400, 0), node_width=300)
    for src, output, name in ((noise, "noise", "noise"), (guider, "GUIDER", "guider"),
                              (sampler, "SAMPLER", "sampler"), (schedule, "sigmas", "sigmas"),
                              (latent, "LATENT", "latent_image")):
        g.connect(src, output, sample, name)
    decode = g.add("VAEDecode", (x + 780, 0), node_width=200)
    g.connect(sample, "output", decode, "samples")
    g.connect(c.ckpt, "VAE", decode, "vae")
    save = g.add("SaveImage", (x + 780, 120), node_width=480, filename_prefix="uniid_official")
    g.connect(decode, "IMAGE", save, "images")
    g.note(OFFICIAL_NOTE, START_POS, START_SIZE, "Start here")
    g.note(MODELS_NOTE, (-480, 0), (440, 340), "Model files")
    g.note(OFFICIAL_DETECTOR_NOTE, (-480, 380), (440, 280), "Face detector")
    g.group("Official sampling", [schedule, noise, guider, sampler, latent, sample], "red")
    return g.to_json("official_settings")


WORKFLOWS = {
    "uniid_basic.json": basic,
    "uniid_multi_reference.json": multi_reference,
    "uniid_advanced_schedule.json": advanced_schedule,
    "uniid_per_block.json": per_block,
    "uniid_save_identity.json": save_identity_workflow,
    "uniid_load_identity.json": load_identity_workflow,
    "uniid_two_people_masks.json": two_people_masks,
    "uniid_official_settings.json": official_settings,
    "uniid_face_similarity.json": face_similarity,
    "uniid_identity_batch.json": identity_batch,
    "uniid_negative_identity.json": negative_identity,
}


def build_all(schema: dict) -> dict[str, dict]:
    """Every example workflow, by file name."""
    return {name: make(schema) for name, make in WORKFLOWS.items()}


def main() -> int:
    """Write workflows/*.json."""
    schema = load_snapshot()["nodes"]
    WORKFLOW_DIR.mkdir(exist_ok=True)
    for name, workflow in build_all(schema).items():
        (WORKFLOW_DIR / name).write_text(json.dumps(workflow, indent=1) + "\n")
        print(f"wrote {Path('workflows') / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
