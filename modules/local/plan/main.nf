process PLAN {
    tag "${model.subdir ? model.label + ': ' : ''}${metas.size() == 1 ? metas[0].id : "${metas[0].id}..${metas[-1].id} (${metas.size()} images)"}"
    label 'cpu_small'
    conda "${projectDir}/envs/${model.family}.yml"

    input:
    // model: [index, label, subdir, family]; spec: its resolved (and fetched) model.json; a batch of images (aiod.batches)
    tuple val(model), val(batch), val(metas), path(images, stageAs: 'images/?/*'), path(spec)
    val code          // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(model), val(metas), path('jobs/*.json'), path('batches.json'), emit: plan
    tuple val(model), path('records/*.json'), emit: records, optional: true   // the cache hits, published here (ext.args --records)

    script:
    def args = task.ext.args ?: ''
    def staged = images instanceof List ? images : [images]
    def rows = metas.withIndex().collect { m, i -> [m.id, staged[i], m.axes ?: '', m.channel ?: ''].join('\t') }
    """
    cat > rows.tsv <<'AIOD_ROWS'
${rows.join('\n')}
AIOD_ROWS
    rm -rf jobs batches.json records    # a folder -resume reuses may hold a killed attempt's part
    export AIOD_FAMILY=${model.family}
    aiod plan --rows rows.tsv --out-dir jobs --name p${batch} --model ${spec} ${args}
    """

    stub:
    """
    mkdir jobs
    ${metas.collect { m -> "echo '{\"id\": \"${m.id}\", \"stub\": true}' > jobs/${m.id}.json" }.join('\n    ')}
    echo '{"hits": [], "n_substacks": {${metas.collect { m -> "\"${m.id}\": 2" }.join(', ')}}, "segment": [${metas.collect { m -> "{\"name\": \"p${batch}.${m.id}\", \"items\": [[\"${m.id}\", 0, 2], [\"${m.id}\", 1, 2]], \"memory\": 0}" }.join(', ')}]}' > batches.json
    """
}
