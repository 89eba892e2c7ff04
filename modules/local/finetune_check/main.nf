process FINETUNE_CHECK {
    tag "${samplesheet.name}"
    label 'cpu_small'
    conda "${projectDir}/envs/classical.yml"

    input:
    tuple path(samplesheet), val(source)   // source: the samplesheet's own absolute path (relative image paths start from its folder)
    path train_params                      // the training parameters' file (--finetune_params), or []
    val code                               // digest of the Python files this step runs: a change reruns the task

    output:
    path 'checked.txt', emit: checked      // one line: the split and every training parameter

    script:
    def args = task.ext.args ?: ''
    """
    aiod finetune --check-only --input '${source}' ${train_params ? "--params ${train_params}" : ''} ${args} > checked.txt
    """

    stub:
    def args = task.ext.args ?: ''
    """
    aiod finetune --check-only --input '${source}' ${train_params ? "--params ${train_params}" : ''} ${args} > checked.txt
    """
}
