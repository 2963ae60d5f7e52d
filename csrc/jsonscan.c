/*
 * The JSON pre- and post-parse scan declared in jsonscan.h.
 *
 * Strings are skipped with memchr(), so string content costs about one
 * memory read per byte.  Only bytes outside strings are examined one by
 * one.
 */
#include "jsonscan.h"

#include <string.h>

/*
 * Return the position just after the '"' that closes the string whose
 * content starts at p, or end if the string is unterminated.  A quote is
 * escaped when an odd number of backslashes precede it; the run of
 * backslashes cannot reach back past the opening quote.
 */
static const char *
skip_string(const char *p, const char *end)
{
	for (;;) {
		const char *quote = memchr(p, '"', (size_t)(end - p));
		const char *before;

		if (quote == NULL)
			return end;
		before = quote;
		while (before > p && before[-1] == '\\')
			before--;
		if ((quote - before) % 2 == 0)
			return quote + 1;
		p = quote + 1;
	}
}

long long
sandbox_json_scan(const char *text, size_t length, unsigned int max_depth)
{
	const char *p = text;
	const char *end = text + length;
	unsigned int depth = 0;
	unsigned int digits = 0;
	int long_number = 0;
	long long colons = 0;

	while (p < end) {
		char c = *p++;

		if (c >= '0' && c <= '9') {
			if (++digits >= SANDBOX_JSON_LONG_DIGITS)
				long_number = 1;
			continue;
		}
		digits = 0;
		switch (c) {
		case '"':
			p = skip_string(p, end);
			break;
		case '[':
		case '{':
			if (++depth > max_depth)
				return SANDBOX_JSON_TOO_DEEP;
			break;
		case ']':
		case '}':
			/* Unbalanced closers make the text invalid anyway. */
			if (depth > 0)
				depth--;
			break;
		case ':':
			colons++;
			break;
		default:
			break;
		}
	}
	return long_number ? SANDBOX_JSON_LONG_NUMBER : colons;
}
