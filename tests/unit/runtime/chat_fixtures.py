#!/usr/bin/python3
"""Renders each chat template make-model writes (one per family: `make-model --arch ARCH`, its
tokenizer_config.json's chat_template, bos_token and eos_token) with jinja2, the way Hugging
Face's apply_chat_template does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
raise_exception), over several conversations, and writes the expected prompts to
tests/golden/chat_templates.json. test_chat.c renders the same conversations in C and compares
byte for byte; a conversation the template refuses (raise_exception) is expected to be refused.
    apt-get install -y python3-jinja2
    /usr/bin/python3 tests/unit/runtime/chat_fixtures.py BUILD/runtime/orp-runtime \\
        tests/golden/chat_templates.json
"""
import json
import os
import subprocess
import sys
import tempfile

import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ARCHS = ["llama", "qwen2", "qwen3", "mistral"]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "  Be brief.\n"},
     {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": " Hello. How can I help?\n\n"},
     {"role": "user", "content": "Tell me a joke.\n"}],
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": ""}, {"role": "user", "content": ""},
     {"role": "assistant", "content": ""}, {"role": "user", "content": " "}],
    [{"role": "user", "content": "\u00a0caf\u00e9 \u2014 \u65e5\u672c\u8a9e \U0001F600\u3000"},
     {"role": "assistant", "content": "\u2003d\u00e9j\u00e0 vu\u2028"},
     {"role": "user", "content": "tabs\tand\r\nnewlines"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
    [{"role": "system", "content": "only a system message"}],
    # Not alternating: Mistral's template refuses it, the others render it.
    [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
     {"role": "system", "content": "late system"}, {"role": "user", "content": "z"}],
]


class TemplateError(Exception):
    pass


def raise_exception(message):
    raise TemplateError(message)


def render(cfg, messages, add_generation_prompt):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    tpl = env.from_string(cfg["chat_template"])
    special = {k: cfg[k] for k in ("bos_token", "eos_token") if cfg.get(k) is not None}
    try:
        return tpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                          **special)
    except TemplateError:
        return None


def main():
    binary, out_path = sys.argv[1], sys.argv[2]
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            d = os.path.join(tmp, arch)
            subprocess.run([binary, "make-model", "--out", d, "--arch", arch], check=True,
                           stdout=subprocess.DEVNULL)
            cfg = json.load(open(d + "/tokenizer_config.json"))
            for messages in CONVERSATIONS:
                for gen in (True, False):
                    cases.append({"arch": arch, "add_generation_prompt": gen,
                                  "messages": messages,
                                  "rendered": render(cfg, messages, gen)})
    with open(out_path, "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
