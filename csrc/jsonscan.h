/*
 * One linear pass over JSON text that gathers what a fast JSON parser does
 * not check: nesting depth, object members and long integer literals.
 *
 * src/sandbox/codec.py runs it before and after orjson.loads().  The
 * depth limit is enforced here, before any parser recurses.  The member
 * count is compared with the keys the parser kept, since a parser that
 * silently keeps the last of two duplicate keys returns fewer keys than the
 * text has members.  The scan never validates JSON: on invalid text its
 * results are only meaningful up to the first error, which is where any
 * parser stops.
 */
#ifndef SANDBOX_JSONSCAN_H
#define SANDBOX_JSONSCAN_H

#include <stddef.h>

enum sandbox_json_scan_status {
	/* Brackets outside strings nest deeper than max_depth. */
	SANDBOX_JSON_TOO_DEEP = -1,
	/*
	 * A run of SANDBOX_JSON_LONG_DIGITS or more digits outside strings:
	 * an integer that a 64-bit parser may turn into a float.
	 */
	SANDBOX_JSON_LONG_NUMBER = -2,
};

/* The digit count from which an integer may not fit 64 bits. */
enum { SANDBOX_JSON_LONG_DIGITS = 19 };

/*
 * Scan text[0..length) and return the number of ':' outside strings, which
 * in valid JSON is the number of object members; or a negative
 * sandbox_json_scan_status.  SANDBOX_JSON_TOO_DEEP wins over
 * SANDBOX_JSON_LONG_NUMBER, and the scan stops as soon as the nesting
 * exceeds max_depth.  A string runs from an unescaped '"' to the next
 * '"' preceded by an even number of backslashes, or to the end of text.
 */
long long sandbox_json_scan(const char *text, size_t length,
			    unsigned int max_depth);

#endif
