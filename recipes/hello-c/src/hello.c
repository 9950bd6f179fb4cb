/* The tiny C project Kiln's tests build: two options change the program. */
#include <stdio.h>

#ifndef GREETING_loud
#define GREETING "hello from kiln"
#else
#define GREETING "HELLO FROM KILN!"
#endif

int main(void) {
    puts(GREETING);
    return 0;
}
