/* hello: one line on the serial port, then a clean exit (code 0). */
        .include "pvh.inc"
main:
        leaq msg(%rip), %rsi
        call puts
        xorl %eax, %eax
        ret
        .section .rodata
msg:    .asciz "Hello from a Vitrine test guest\n"
