/* triple_fault: an exception with an empty IDT. #UD cannot be delivered,
 * nor the #GP and #DF that follow, so the CPU shuts down. */
        .include "pvh.inc"
main:
        leaq msg(%rip), %rsi
        call puts
        lidt empty_idt(%rip)
        ud2
        .section .rodata
empty_idt:
        .word 0
        .quad 0
msg:    .asciz "about to triple-fault\n"
