/* chat: the Llama 3 chat template, applied to an OpenAI "messages" array. Special tokens are
 * inserted as ids and message content is encoded as plain text, so a client cannot forge a
 * header or an end of turn by writing "<|eot_id|>" in its content. The ids equal those of
 * Hugging Face's template rendered and tokenized (content trimmed, as the template does). */
#ifndef ORP_CHAT_H
#define ORP_CHAT_H

#include <jansson.h>

#include "jsonx.h"
#include "tokenizer.h"

struct chat_tpl {
    int bot;          /* <|begin_of_text|> */
    int start_header; /* <|start_header_id|> */
    int end_header;   /* <|end_header_id|> */
    int eot;          /* <|eot_id|> */
};

/* Finds the template's special tokens in t. 0, or -1 with err naming the one missing. */
int chat_tpl_init(struct chat_tpl *c, const struct tok *t, char *err, size_t errlen);

/* Validates messages (borrowed) and appends the prompt's ids to out, ending with the assistant
 * header when add_generation_prompt. 0; -1 when the client's input is bad (err names the
 * param, e.g. "messages[1].role"); -2 on an internal failure (out of memory). */
int chat_encode(const struct chat_tpl *c, const struct tok *t, json_t *messages,
                int add_generation_prompt, struct tok_ids *out, struct jsonx_err *err);

#endif
