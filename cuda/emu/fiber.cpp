// fiber.cpp: the context switch of the emulation's fibers on x86-64 (System V): saves rbp, rbx,
// r12-r15, MXCSR and the x87 control word on the current stack, stores the stack pointer in *save
// (rdi), switches to the stack `load` (rsi) and restores the same set from it. No system call, unlike
// swapcontext (which saves the signal mask). See emu::ctx_init in cuda_emu.h for a new stack's layout.
#if defined(__x86_64__)
asm(R"(
    .text
    .globl fasp_emu_swap
    .type fasp_emu_swap, @function
fasp_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fasp_emu_swap, .-fasp_emu_swap
    .section .note.GNU-stack,"",@progbits
)");
#endif
