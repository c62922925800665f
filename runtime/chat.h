/* chat: chat templates, applied to an OpenAI "messages" array: Llama 3, ChatML (Qwen) and Mistral,
 * chosen by recognising the family of tokenizer_config.json's chat_template (an unknown or
 * missing template falls back to the architecture's family, with a warning). The templates are
 * implemented in C, not interpreted: each family's rendering equals, byte for byte, jinja2's
 * rendering of the template make-model writes (tests/golden/chat_templates.json). Special tokens
 * are inserted as ids and message content is encoded as plain text, so a client cannot forge a
 * header or an end of turn by writing "<|eot_id|>" in its content. */
#ifndef ORP_CHAT_H
#define ORP_CHAT_H

#include <jansson.h>

#include "jsonx.h"
#include "model.h"
#include "tokenizer.h"

enum chat_family { CHAT_LLAMA3 = 0, CHAT_CHATML, CHAT_MISTRAL };

/* Special token texts are at most this long (real ones are ~20 bytes). */
#define CHAT_MAX_TOKEN_TEXT 64

struct chat_tpl {
    enum chat_family family;
    /* bos_token of tokenizer_config.json: rendered by the Llama 3 and Mistral templates and put
     * before a plain prompt by /tokenize; -1 / "" when it is null (Qwen). */
    int bos_id;
    char bos[CHAT_MAX_TOKEN_TEXT];
    int eos_id; /* eos_token: ends each assistant turn in Mistral's format */
    char eos[CHAT_MAX_TOKEN_TEXT];
    int start_header, end_header, eot; /* Llama 3 */
    int im_start, im_end;              /* ChatML */
    int inst, inst_end;                /* Mistral: [INST] [/INST] */
    /* ChatML: the system message the template adds when the conversation has none (Qwen2's
     * "You are a helpful assistant."); NULL when it adds none. Owned. */
    char *default_system;
};

/* Reads DIR/tokenizer_config.json (absent: the architecture's family), recognises the template's
 * family and finds its special tokens in t. 0, or -1 with err (a token the family needs is
 * missing, or the file is malformed). Free with chat_tpl_free. */
int chat_tpl_load(struct chat_tpl *c, const char *dir, enum model_arch arch, const struct tok *t,
                  char *err, size_t errlen);
void chat_tpl_free(struct chat_tpl *c);
const char *chat_family_name(enum chat_family f);

/* Validates messages (borrowed) and renders the prompt: its text into text (NULL: not wanted) and
 * its ids appended to ids (NULL: not wanted), ending with the assistant's header when
 * add_generation_prompt (Mistral's format has none). 0; -1 when the client's input is bad (err
 * names the param, e.g. "messages[1].role"); -2 on an internal failure (out of memory). */
int chat_render(const struct chat_tpl *c, const struct tok *t, json_t *messages,
                int add_generation_prompt, struct buf *text, struct tok_ids *ids,
                struct jsonx_err *err);
/* chat_render for the ids only. */
int chat_encode(const struct chat_tpl *c, const struct tok *t, json_t *messages,
                int add_generation_prompt, struct tok_ids *out, struct jsonx_err *err);

#endif
