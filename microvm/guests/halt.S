/* halt: halts with interrupts off. */
        .include "pvh.inc"
main:
        leaq msg(%rip), %rsi
        call puts
        cli
        hlt
        jmp main
        .section .rodata
msg:    .asciz "halting\n"
