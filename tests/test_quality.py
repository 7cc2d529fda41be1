"""Quality flags (pipeline/quality.py): pure functions over answers and tables, no IO.

The looping answers below are shaped like real degenerate model output (a phrase repeated until
max_tokens, a numbered list that never ends, a word stuck at the tail); the long normal captions
must never be flagged, whatever their length or layout."""

# Chinese text is written with its own full-width punctuation, on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from pipeline.quality import (
    FLAGS,
    FLAGS_TYPE,
    asked_language,
    count_flags,
    duplicate_key,
    flag_table,
    han_share,
    is_refusal,
    is_repetition,
    is_wrong_language,
    prompts_of,
    repetition_share,
    structured_of,
    tokens,
    with_flags,
)

EN_LONG = (
    "The image shows a busy street market at dusk in what appears to be a Southeast Asian city. "
    "In the foreground, a woman in a red apron stands behind a wooden stall piled with mangoes, "
    "dragon fruit and bunches of small bananas; she is handing a paper bag to a customer whose "
    "back is to the camera. To the left, a vendor grills skewers of meat over a charcoal brazier, "
    "and a thin column of smoke drifts up through the light of a string of bare bulbs hanging "
    "above the stalls. The middle ground is crowded with shoppers: a man carrying a child on his "
    "shoulders, two teenagers sharing a drink with straws, and an elderly man pushing a bicycle "
    "loaded with plastic crates. Behind them, hand-painted signs in several languages advertise "
    "noodles, fresh juice and phone repairs. The buildings in the background are three or four "
    "storeys tall, with laundry hanging from balconies and tangled electrical wires crossing the "
    "street. The sky is a deep blue fading to orange near the horizon, and the warm light of the "
    "stalls contrasts with the cool tones of the evening. The overall mood is lively and "
    "welcoming, and the photograph is sharp, well exposed and taken from a slightly elevated "
    "position, perhaps from a footbridge or a second-floor window. There is a blue scooter parked "
    "at the right edge of the frame, and a stray dog sleeps under one of the tables. In the lower "
    'right corner a small sign reads "OPEN 24 HOURS". The image shows the market in detail, and '
    "the image shows how busy the market is at this time of day."
)
ZH_LONG = (
    "这张图片展示了一个黄昏时分热闹的街头市场，看起来像是一座东南亚城市。画面前景中，一位系着红色围裙的"
    "女士站在木制摊位后面，摊位上堆满了芒果、火龙果和成串的小香蕉；她正把一个纸袋递给一位背对镜头的顾客。"
    "左侧，一名小贩在炭火炉上烤着肉串，一缕细细的烟雾在摊位上方悬挂的一串灯泡的光线中缓缓升起。画面中景"
    "挤满了购物的人群：一位把孩子扛在肩上的男子，两个用吸管分享一杯饮料的青少年，还有一位推着装满塑料箱"
    "的自行车的老人。在他们身后，用多种语言手绘的招牌宣传着面条、鲜榨果汁和手机维修服务。背景中的建筑有"
    "三四层高，阳台上晾着衣服，杂乱的电线横穿街道。天空呈深蓝色，在地平线附近渐渐变成橙色，摊位温暖的"
    "灯光与傍晚的冷色调形成鲜明对比。整体氛围热闹而亲切，照片清晰、曝光良好，似乎是从稍高的位置拍摄的，"
    "也许是在天桥上或二楼的窗户旁。画面右侧边缘停着一辆蓝色的摩托车，一只流浪狗在一张桌子下面睡觉。"
    "右下角的一个小牌子上写着“24小时营业”。这张图片展示了市场的细节，这张图片也展示了这个时候市场有多么"
    "繁忙。"
)
ZH_MARKDOWN = """### 图像描述

**主体**：一只橘色的猫趴在窗台上，眼睛半闭，看起来很放松。

**背景**：窗外是一片绿色的树林，阳光透过树叶洒在窗台上。

**颜色**：以橘色、绿色和白色为主，整体色调温暖。

**细节**：
1. 猫的胡须清晰可见。
2. 窗台上有一盆小小的多肉植物。
3. 窗帘是白色的，有淡淡的花纹。
4. 窗玻璃上有一些水珠。

**氛围**：宁静、温馨，给人一种慵懒的午后感觉。"""
EN_MARKDOWN = """Here is a detailed description of the image:

* **Subject:** A golden retriever puppy sitting on a wooden porch.
* **Colors:** Warm golden fur, brown wood, green grass in the background.
* **Lighting:** Soft afternoon sunlight coming from the left.
* **Details:**
    * The puppy has a red collar with a small silver tag.
    * One ear is slightly folded.
    * There is a chewed tennis ball next to its front paw.
* **Background:** A blurred garden with a white picket fence.
* **Mood:** Playful and friendly."""
# A long caption that says one sentence twice and reuses stock phrases: still not a loop.
EN_SAYS_TWICE = (
    EN_LONG[:600] + " The photograph is sharp and well exposed. " + EN_LONG[600:1100]
    + " The photograph is sharp and well exposed."
)  # fmt: skip

LOOPS = {
    # a phrase repeated until max_tokens (the common Chinese degenerate answer)
    "zh phrase": "这张图片展示了一只猫坐在沙发上。猫的毛色是橘色的，眼睛是绿色的。"
    + "它看起来很放松，它看起来很舒适，" * 40,
    # a good answer that falls into a loop at its end and is cut there
    "zh tail": ZH_LONG + "画面中有一只狗，画面中有一只猫，画面中有一只鸟，" * 12,
    "en sentences": "The image shows a red car parked on a street. "
    + "The car is red. The car is parked. The car is on the street. " * 30,
    "en stuck word": EN_LONG + " and the" + " the" * 40,
    "numbered list": "Tags:\n" + "".join(f"{i}. red car\n" for i in range(1, 60)),
    "repeated line": "Objects in the image:\n" + "- a wooden chair next to the window\n" * 25,
    "single char": "哈" * 60,
    "zh list tail": ZH_MARKDOWN + "".join(f"\n{i}. 一只白色的小猫咪。" for i in range(5, 40)),
}
NORMAL = {
    "en long": EN_LONG,
    "zh long": ZH_LONG,
    "zh markdown": ZH_MARKDOWN,
    "en markdown": EN_MARKDOWN,
    "en says twice": EN_SAYS_TWICE,
    "en short": "A cat on a sofa.",
    "tags": "cat, sofa, indoor, orange, cushion, living room, window, afternoon light",
    "zh short": "一只猫坐在沙发上。",
}


class TestRepetition:
    @pytest.mark.parametrize("name", sorted(LOOPS))
    def test_looping_answers_are_flagged(self, name: str) -> None:
        assert is_repetition(LOOPS[name]), repetition_share(LOOPS[name])

    @pytest.mark.parametrize("name", sorted(NORMAL))
    def test_normal_captions_are_not(self, name: str) -> None:
        assert not is_repetition(NORMAL[name]), repetition_share(NORMAL[name])

    def test_share_and_tail(self) -> None:
        """A loop over most of the answer covers most of its tokens and reaches its end; a loop
        only at the end covers a small share but a long tail."""
        share, tail = repetition_share(LOOPS["en sentences"])
        assert share > 0.9 and tail > 100
        share, tail = repetition_share(LOOPS["zh tail"])
        assert share < 0.5 and tail >= 32
        assert repetition_share(EN_LONG) == (0.0, 0)

    def test_chinese_is_tokenised_per_character(self) -> None:
        assert tokens("一只猫 sat on the MacBook，很好！") == [
            "一", "只", "猫", "sat", "on", "the", "macbook", "，", "很", "好", "！",
        ]  # fmt: skip

    def test_a_loop_in_the_middle_counts_by_its_share(self) -> None:
        """A loop that ends before the answer does is flagged when it is most of the answer, not
        when it is a small part of it."""
        loop = "the dog is happy and the dog is playing. " * 20
        assert is_repetition("Intro sentence here. " + loop + "That is all.")
        assert not is_repetition(EN_LONG + " " + "the dog is happy. " * 3 + EN_LONG[:400])


class TestRefusal:
    @pytest.mark.parametrize(
        "text",
        [
            "I'm sorry, but I can't help with that.",
            "I’m sorry, but I can’t assist with identifying people in images.",
            "Sorry, I cannot describe this image.",
            "I apologize, but I'm unable to process this image.",
            "Unfortunately, I am unable to view images.",
            "I cannot help with this request.",
            "I can't identify real people from their facial features.",
            "As an AI language model, I cannot see images.",
            "As an AI, I don't have the ability to view pictures.",
            "  **Sorry**, I can't do that.",
            '"I\'m sorry, but I cannot provide a description."',
            "抱歉，我无法识别图中的人物。",
            "很抱歉，我不能提供帮助。",
            "对不起，我无法协助完成这个请求。",
            "抱歉！我不能",
            "**抱歉**，我无法处理这张图片。",
            "我无法提供该图像的描述。",
            "无法提供该图像的描述。",
            "我不能识别图片中的人物身份。",
            "作为一个人工智能，我无法查看图像。",
            "作为AI语言模型，我不能看到图片。",
            "對不起，我無法協助。",
            "抱歉，但我无法满足这个请求。",
        ],
    )
    def test_refusals(self, text: str) -> None:
        assert is_refusal(text)

    @pytest.mark.parametrize(
        "text",
        [
            "The image shows a sorry-looking dog. I cannot help but smile at it.",
            "I cannot determine the breed, but this is a medium-sized brown dog on a lawn.",
            "A sign in the window reads: Sorry, we're closed.",
            "图片中有一只猫，抱歉我无法识别它的品种。",
            "我不能确定这是什么品种的狗，但它看起来很友好。",
            "这张图片展示了一位女士，她说：“抱歉，我无法参加。”",
            "Sorry Mom is written on the cake in blue icing.",
            EN_LONG,
            ZH_LONG,
        ],
    )
    def test_captions_that_mention_sorry_or_cannot_are_not(self, text: str) -> None:
        assert not is_refusal(text)


class TestLanguage:
    @pytest.mark.parametrize(
        ("prompt", "language"),
        [
            ("使用中文描述这张图像", "zh"),
            ("请用中文回答：图中有什么？", "zh"),
            ("用简体中文描述这张图片", "zh"),
            ("Describe the image in Chinese.", "zh"),
            ("Describe this picture in Simplified Chinese, in detail.", "zh"),
            ("Describe the image in English.", "en"),
            ("请用英文描述这张图片", "en"),
            ("Describe the image.", None),
            ("List 5-10 comma-separated tags for the image $filename.", None),
            ("用中文描述，然后 in English", None),  # both: no expectation
        ],
    )
    def test_asked_language(self, prompt: str, language: str | None) -> None:
        assert asked_language(prompt) == language

    def test_han_share(self) -> None:
        assert han_share(ZH_LONG) == pytest.approx(1.0, abs=0.01)
        assert han_share(EN_LONG) == 0.0
        assert (han_share("这是一台MacBook Pro笔记本电脑") or 0) > 0.8  # a name is one word
        assert (han_share("これは東京の写真です。") or 1) < 0.5  # Japanese: kana
        assert han_share("12345 !!") is None

    def test_wrong_language(self) -> None:
        assert is_wrong_language(EN_LONG, "zh")
        assert not is_wrong_language(ZH_LONG, "zh")
        assert is_wrong_language(ZH_LONG, "en")
        assert not is_wrong_language(EN_LONG, "en")
        assert not is_wrong_language(EN_LONG, None)
        assert is_wrong_language("これは東京の写真です。", "zh")
        assert not is_wrong_language("图中是一台 iPhone 15 Pro Max 手机，放在木桌上。", "zh")


class TestDuplicateKey:
    def test_case_punctuation_and_spacing_aside(self) -> None:
        assert duplicate_key("A cat sits on a mat.") == duplicate_key("a cat  sits on a mat")
        assert duplicate_key("A CAT, sits on a mat!\n") == "a cat sits on a mat"
        assert duplicate_key("一只猫，坐在垫子上。") == duplicate_key("一只猫,坐在垫子上")
        assert duplicate_key("Ａ ｃａｔ sits on a mat") == "a cat sits on a mat"  # NFKC

    def test_short_answers_are_not_compared(self) -> None:
        assert duplicate_key("Yes.") is None
        assert duplicate_key("a black cat") is None
        assert duplicate_key("一只黑猫") == "一只黑猫"  # four characters: four tokens


def table(rows: list[dict[str, Any]]) -> pa.Table:
    base = {"status": "ok", "finish_reason": "stop", "prompt_name": "describe",
            "image_sha256": None, "error": None}  # fmt: skip
    full = [{**base, "image_path": f"img{i}.jpg", **row} for i, row in enumerate(rows)]
    return pa.Table.from_pylist(full)


PROMPTS = {"describe": "Describe the image.", "zh": "使用中文描述这张图像", "annotate": "Tags"}


class TestFlagTable:
    def flags(self, rows: list[dict[str, Any]], **kw: Any) -> list[list[str]]:
        got = flag_table(table(rows), PROMPTS, **kw)
        assert got.type == FLAGS_TYPE
        return [list(f) for f in got.to_pylist()]

    def test_each_flag(self) -> None:
        rows = [
            {"caption": EN_LONG},
            {"caption": EN_LONG[:300], "finish_reason": "length"},
            {"caption": "  \n"},
            {"caption": None},
            {"caption": "I'm sorry, but I can't help with that."},
            {"caption": LOOPS["zh phrase"], "prompt_name": "zh", "finish_reason": "length"},
            {"caption": EN_MARKDOWN, "prompt_name": "zh"},
            {"caption": ZH_LONG, "prompt_name": "zh"},
        ]
        assert self.flags(rows) == [
            [],
            ["truncated"],
            ["empty"],
            ["empty"],
            ["refusal"],
            ["truncated", "repetition"],
            ["wrong_language"],
            [],
        ]

    def test_failed_rows_get_no_empty_and_no_duplicate(self) -> None:
        """A failed row has no answer to be empty; its raw text is not compared."""
        rows = [
            {"caption": None, "status": "failed", "error": "HTTP 500"},
            {"caption": EN_LONG, "status": "failed", "finish_reason": "length"},
            {"caption": EN_LONG},
        ]
        assert self.flags(rows) == [[], ["truncated"], []]

    def test_duplicates_across_images_not_copies_of_one_image(self) -> None:
        """The same caption for two different images is flagged on both, in FLAGS order; two
        paths holding the same bytes (one sha256) are one image."""
        rows = [
            {"caption": "A cat sits on a red sofa.", "image_sha256": "aa"},
            {"caption": "a cat sits on a red sofa", "image_sha256": "bb",
             "finish_reason": "length"},
            {"caption": "A dog sits on a red sofa.", "image_sha256": "cc"},
            {"caption": "A dog sits on a red sofa.", "image_sha256": "cc"},
            {"caption": "Yes.", "image_sha256": "dd"},
            {"caption": "Yes.", "image_sha256": "ee"},
        ]  # fmt: skip
        assert self.flags(rows) == [
            ["duplicate"], ["truncated", "duplicate"], [], [], [], [],
        ]  # fmt: skip

    def test_duplicates_by_path_without_sha(self) -> None:
        rows = [{"caption": "A cat sits on a red sofa."}, {"caption": "A cat sits on a red sofa."}]
        assert self.flags(rows) == [["duplicate"], ["duplicate"]]

    def test_schema_prompts_get_only_truncated_and_empty(self) -> None:
        """A schema'd prompt's answer is JSON: not judged as prose (its English keys under a
        Chinese prompt, two images with the same enum values)."""
        answer = '{"contains_text": false, "rating": "good", "tags": ["cat", "sofa"]}'
        rows = [
            {"caption": answer, "prompt_name": "annotate", "image_sha256": "a"},
            {"caption": answer, "prompt_name": "annotate", "image_sha256": "b"},
            {"caption": "", "prompt_name": "annotate", "finish_reason": "length"},
        ]
        prompts = {**PROMPTS, "annotate": "使用中文标注这张图像"}
        got = flag_table(table(rows), prompts, structured={"annotate"}).to_pylist()
        assert got == [[], [], ["truncated", "empty"]]

    def test_missing_columns_and_empty_tables(self) -> None:
        bare = pa.table({"caption": ["I cannot help with this request.", None]})
        assert flag_table(bare, {}).to_pylist() == [["refusal"], []]
        empty = pa.table({"caption": pa.array([], pa.string())})
        assert flag_table(empty, {}).to_pylist() == []

    def test_with_flags_and_the_job(self) -> None:
        job = {"prompts": [
            {"name": "zh", "text": "使用中文描述这张图像", "schema": None},
            {"name": "annotate", "text": "Annotate", "schema": {"type": "object"}},
        ]}  # fmt: skip
        assert prompts_of(job) == {"zh": "使用中文描述这张图像", "annotate": "Annotate"}
        assert structured_of(job) == {"annotate"}
        assert prompts_of(None) == {} and structured_of(None) == frozenset()
        t = table(
            [
                {"caption": EN_LONG, "prompt_name": "zh"},
                {"caption": "{}", "prompt_name": "annotate"},
            ]
        )
        flagged = with_flags(t, job)
        assert flagged["flags"].to_pylist() == [["wrong_language"], []]
        again = with_flags(flagged, None)  # replaced, not appended twice
        assert again.column_names.count("flags") == 1
        assert again["flags"].to_pylist() == [[], []]

    def test_count_flags(self) -> None:
        flags = pa.array([["truncated", "duplicate"], [], ["duplicate"]], FLAGS_TYPE)
        assert count_flags(flags) == {**dict.fromkeys(FLAGS, 0), "truncated": 1, "duplicate": 2}


def test_flags_are_the_contract() -> None:
    """Users' scripts filter on these names: they do not change."""
    assert FLAGS == ("truncated", "empty", "refusal", "repetition", "duplicate", "wrong_language")
