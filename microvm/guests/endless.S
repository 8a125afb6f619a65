/* endless: never stops on its own; the VMM's wall-clock limit must. */
        .include "pvh.inc"
main:
        leaq msg(%rip), %rsi
        call puts
1:      jmp 1b
        .section .rodata
msg:    .asciz "spinning forever\n"
