#!/usr/bin/env nextflow
/*
 * AIoD: segment microscopy images far larger than one GPU, substack by substack, merge the
 * substacks into one seam-free instance mask, and keep every result in a shared cache keyed by
 * what made it. See README.md and docs/.
 */

include { RESOLVE_MODEL   } from './modules/local/resolve_model'
include { FETCH_ARTIFACTS } from './modules/local/fetch_artifacts'
include { CHECK_INPUT   } from './modules/local/check_input'
include { PLAN          } from './modules/local/plan'
include { SEGMENT       } from './modules/local/segment'
include { MERGE         } from './modules/local/merge'
include { FINALIZE      } from './modules/local/finalize'
include { EVALUATE      } from './modules/local/evaluate'
include { COUNT         } from './modules/local/count'
include { COMPARE       } from './modules/local/compare'
include { FINETUNE_CHECK } from './modules/local/finetune_check'
include { FINETUNE_TRAIN } from './modules/local/finetune_train'

// A digest of some files (names relative to `base`, and contents). Nextflow hashes the bin/
// scripts a task names, not the Python modules they import, so each process takes the digest
// of the sources its step runs (src/aiod/step_sources.json, kept current by a test): editing
// one of them reruns exactly those tasks on -resume. RESOLVE_MODEL also takes the registry's.
def filesDigest(File base, List<File> files) {
    def digest = java.security.MessageDigest.getInstance('SHA-256')
    files.sort { f -> f.path }.each { f ->
        digest.update(base.toPath().relativize(f.toPath()).toString().bytes)
        digest.update(f.bytes)
    }
    return digest.digest().encodeHex().toString().take(16)
}

// process name -> digest of the Python files that its step runs
def stepDigests(File pkg) {
    def steps = new groovy.json.JsonSlurperClassic().parse(new File(pkg, 'step_sources.json'))
    return steps.collectEntries { step, names -> [(step): filesDigest(pkg, names.collect { n -> new File(pkg, n) })] }
}

// every manifest of the built-in registry and of --registry_dir
def manifestFiles(List<File> dirs) {
    def found = []
    dirs.findAll { dir -> dir.isDirectory() }.each { dir ->
        dir.eachFileRecurse(groovy.io.FileType.FILES) { f -> if (f.name.endsWith('.yaml') || f.name.endsWith('.yml')) { found << f } }
    }
    return found
}

// `--help`: every parameter with its default and meaning, read from nextflow_schema.json.
def helpText(File schemaFile) {
    def schema = new groovy.json.JsonSlurperClassic().parse(schemaFile)
    def lines = ["Usage: nextflow run main.nf --input images.csv --model classical --outdir results [-profile ...] [-resume]", '']
    schema['$defs'].each { group_name, group ->
        lines << "${group.title}:"
        group.properties.each { name, spec ->
            if (spec.hidden) {
                return
            }
            def dflt = spec.containsKey('default') ? " [default: ${spec.default}]" : ''
            lines << String.format('  --%-16s %s%s', name, spec.description, dflt)
        }
        lines << ''
    }
    return lines.join('\n')
}

// Every parameter checked against nextflow_schema.json before any task starts: unknown names,
// types, whole numbers and enums. Returns the first problem as one line, or null.
def paramProblem(File schemaFile, Map given) {
    def specs = [:]
    new groovy.json.JsonSlurperClassic().parse(schemaFile)['$defs'].each { group_name, group -> specs.putAll(group.properties) }
    for (entry in given) {
        def name = entry.key
        def value = entry.value
        def spec = specs[name]
        if (spec == null) {
            def close = specs.keySet().min { known -> editDistance(known, name) }
            def hint = editDistance(close, name) <= 3 ? " (did you mean --${close}?)" : ''
            return "unknown parameter --${name}${hint}; see nextflow run main.nf --help"
        }
        if (value == null) {
            continue
        }
        if (spec.type == 'boolean' && !(value instanceof Boolean)) {
            return "--${name} '${value}': expected true or false"
        }
        if (spec.type == 'string' && (value instanceof Boolean)) {
            return "--${name}: expected a value (${spec.description})"
        }
        if (spec.type == 'integer' && !(value.toString() ==~ /\d+/ && (value as long) >= (spec.minimum ?: 0))) {
            return "--${name} '${value}': expected a whole number >= ${spec.minimum ?: 0} (${spec.description})"
        }
        if (spec.enum && !(value.toString() in spec.enum)) {
            return "--${name} '${value}': expected one of ${spec.enum.join(', ')}"
        }
    }
    return null
}

def editDistance(String a, String b) {
    def row = (0..b.length()).toList()
    a.eachWithIndex { ca, i ->
        def next = [i + 1]
        b.eachWithIndex { cb, j -> next << [row[j + 1] + 1, next[j] + 1, row[j] + (ca == cb ? 0 : 1)].min() }
        row = next
    }
    return row[b.length()]
}

workflow {
    def schemaFile = file("${projectDir}/nextflow_schema.json").toFile()
    if (params.help) {
        log.info(helpText(schemaFile))
        return
    }
    def problem = paramProblem(schemaFile, params)
    if (problem) {
        error("AIOD ERROR: ${problem}")
    }
    if (!params.input) {
        error("AIOD ERROR: --input is required: a CSV samplesheet with columns id,image[,axes,channel,ground_truth] (see docs/usage.md)")
    }
    code = stepDigests(file("${projectDir}/src/aiod").toFile())
    registry_dirs = [file("${projectDir}/model_registry").toFile()] + (params.registry_dir ? [file(params.registry_dir).toFile()] : [])
    registry = filesDigest(new File('/'), manifestFiles(registry_dirs))
    samplesheet = file(params.input)
    if (!samplesheet.exists()) {
        error("AIOD ERROR: --input ${params.input}: file not found")
    }
    if (params.models && (params.model != 'classical' || params.model_version || params.task || params.model_params)) {
        error("AIOD ERROR: --models names every model with its version, task and parameters: use it without --model, --model_version, --task and --model_params")
    }
    request_file = params.models ? (params.models.trim() ==~ /(?i).*\.(ya?ml|json)/ ? file(params.models.trim()) : []) : (params.model_params ? file(params.model_params) : [])
    if (params.regions && !file(params.regions).exists()) {
        error("AIOD ERROR: --regions ${params.regions}: file not found")
    }
    if (request_file && !request_file.exists()) {
        error("AIOD ERROR: --${params.models ? 'models' : 'model_params'} ${params.models ?: params.model_params}: file not found")
    }

    // [request, its file or []]: [[model: 'classical', version: '', task: '', models: '', source: ''], []]
    request = [model: params.model, version: params.model_version ?: '', task: params.task ?: '', models: params.models ?: '',
                   source: request_file ? request_file.toString() : '']
    RESOLVE_MODEL(channel.of([request, request_file]), registry, code.RESOLVE_MODEL)

    // [model, its spec]: [[index: 0, label: 'stardist_2D_versatile_fluo', subdir: '', family: 'stardist', locations: 1], 0.json]
    // The model travels with every element from here on: one run fans out images x models, and
    // each step that loads a model runs in its family's environment (conf/venv.config, conda.config).
    ch_resolved = RESOLVE_MODEL.out.models.flatten()
        .map { spec ->
            def m = new groovy.json.JsonSlurperClassic().parse(spec.toFile())
            [[index: m.index, label: m.label, subdir: m.subdir, family: m.family, locations: m.locations.size()], spec]
        }
        .branch { model, spec ->
            fetch: model.locations > 0
            ready: true
        }
    FETCH_ARTIFACTS(ch_resolved.fetch, code.FETCH_ARTIFACTS)
    ch_model = FETCH_ARTIFACTS.out.model.mix(ch_resolved.ready)

    // [samplesheet, its absolute path]: [images.csv, '/data/images.csv']; the folders the models publish in
    CHECK_INPUT(channel.of([samplesheet, samplesheet.toAbsolutePath().toString()]),
                ch_resolved.fetch.mix(ch_resolved.ready).map { model, spec -> model.subdir }.toSortedList(), code.CHECK_INPUT)
    ch_samples = CHECK_INPUT.out.samples.splitCsv(header: true, quote: '"')

    // [model, plan batch, [meta...], [image...], model spec]: [model, 0, [[id: 'field1', axes: 'YX', channel: '', image: '/data/field1.tif'], ...], [...], spec]
    // CHECK_INPUT numbers the PLAN task of each image (aiod.batches): many small images share one
    ch_plan_batches = ch_samples
        .map { row -> [row.plan_batch as int, [id: row.id, axes: row.axes, channel: row.channel, image: row.image], file(row.image)] }
        .groupTuple()
        .combine(ch_model)
        .map { batch, metas, images, model, spec -> [model, batch, metas, images, spec] }
    PLAN(ch_plan_batches, code.PLAN)

    // [model, metas by id, job files by id, batches.json parsed]: what each PLAN task found and planned
    // (JsonSlurperClassic builds plain maps: JsonSlurper's lazy maps are built on first read, and
    // several operators read this one from their own threads)
    ch_planned = PLAN.out.plan.map { model, metas, jobs, batches ->
        [model, metas.collectEntries { m -> [(m.id): m] }, asList(jobs).collectEntries { j -> [(j.name.substring(0, j.name.length() - 5)): j] },
         new groovy.json.JsonSlurperClassic().parse(batches.toFile())]
    }

    // [model, batch, [job...], [image...]]: one SEGMENT task per batch of substacks, from one image or many
    ch_segment = ch_planned.flatMap { model, metas, jobs, batches ->
        batches.segment.collect { b ->
            def ids = b.items.collect { item -> item[0] }.unique()
            def items = b.items.collect { id, substack, n -> [id: id, substack: substack, n: n, job: ids.indexOf(id)] }
            [model, [name: b.name, memory: b.memory, items: items, jobs: ids.collect { id -> jobs[id].toString() }], ids.collect { id -> jobs[id] }, ids.collect { id -> file(metas[id].image) }]
        }
    }
    SEGMENT(ch_segment, code.SEGMENT)

    // [model, batch, [[item, its output]...]]: a substack's labels, or the result of an image planned as one substack
    ch_segmented = SEGMENT.out.labels.map { model, batch, outs -> [model, batch, asList(outs).sort { out -> out.name as int }.collect { out -> [batch.items[out.name as int], out] }] }

    // [model, meta, job, [substack labels]]: an image's merge starts as soon as its own substacks are done
    ch_to_merge = ch_segmented
        .flatMap { model, batch, outs -> outs.findAll { item, out -> item.n > 1 }.collect { item, out -> [groupKey("${model.index}/${item.id}".toString(), item.n), out] } }
        .groupTuple()
        .map { key, labels -> [key.toString(), labels] }
        .join(ch_planned.flatMap { model, metas, jobs, batches ->
            batches.n_substacks.findAll { id, n -> n > 1 && !(id in batches.hits) }.collect { id, n -> ["${model.index}/${id}".toString(), model, metas[id], jobs[id]] }
        })
        .map { key, labels, model, meta, job -> [model, meta, job, labels] }
    MERGE(ch_to_merge, code.MERGE)

    // [model, [id...], [job...], [result...]]: results go into the cache and out a batch at a time:
    // those one SEGMENT task made together, each merged one alone (PLAN published the cache hits)
    ch_final = ch_segmented
        .map { model, batch, outs -> [model, outs.findAll { item, out -> item.n == 1 }.collect { item, out -> [item.id, file(batch.jobs[item.job]), out] }] }
        .filter { model, done -> done }
        .map { model, done -> [model] + done.transpose() }
        .mix(MERGE.out.result.map { model, meta, job, result -> [model, [meta.id], [job], [result]] })
    FINALIZE(ch_final, code.FINALIZE)

    // [model, [record...]]: the records of what one task published (FINALIZE, or PLAN for its cache hits)
    ch_published = FINALIZE.out.records.map { model, ids, records -> [model, asList(records)] }
        .mix(PLAN.out.records.map { model, records -> [model, asList(records)] })

    // [model, record]: every image's record, as published
    ch_records = ch_published.flatMap { model, records -> records.collect { record -> [model, record] } }

    // [model, [id...], [ground truth...], [record...]]: the results of one publishing task that have ground truth, scored together
    ch_truth = ch_samples.filter { row -> row.ground_truth }.map { row -> [row.id, row.ground_truth] }.toList().map { pairs -> pairs.collectEntries() }
    ch_to_score = ch_published
        .combine(ch_truth)
        .map { model, records, gt -> [model, records.findAll { r -> gt[r.baseName] }.collect { r -> [r.baseName, file(gt[r.baseName]), r] }] }
        .filter { model, scored -> scored }
        .map { model, scored -> [model] + scored.transpose() }
    EVALUATE(ch_to_score, code.EVALUATE)

    // [model, [id...], [[atlas_scale, voxel_size, atlas_offset]...], [atlas...], [record...]]: the results of one publishing task
    // whose image has an atlas, counted per region together (from the object table cached with each result)
    ch_atlas = ch_samples.filter { row -> row.atlas }.map { row -> [row.id, [row.atlas, row.atlas_scale ?: '', row.voxel_size ?: '', row.atlas_offset ?: '']] }
        .toList().map { pairs -> pairs.collectEntries() }
    ch_to_count = ch_published
        .combine(ch_atlas)
        .map { model, records, atlas -> [model, records.findAll { r -> atlas[r.baseName] }.collect { r ->
            def a = atlas[r.baseName]
            [r.baseName, [a[1], a[2], a[3]], file(a[0]), r] }] }
        .filter { model, counted -> counted }
        .map { model, counted -> [model] + counted.transpose() }
    COUNT(ch_to_count, params.regions ? file(params.regions) : [], code.COUNT)

    // once, when every result is published: the comparison table, the scores and the report
    COMPARE(ch_records.map { model, record -> record }.collect(sort: { a, b -> a.toString() <=> b.toString() }).ifEmpty([]),
            EVALUATE.out.scores.flatMap { model, scores -> asList(scores) }.collect().ifEmpty([]),
            COUNT.out.counted.map { model, ids -> ids.size() }.sum().ifEmpty(0),
            runInfo(), code.COMPARE)

    ch_records
        .map { model, record -> new groovy.json.JsonSlurperClassic().parse(record.toFile()) }
        .toSortedList { a, b -> (a.model_label <=> b.model_label) ?: (a.id <=> b.id) }
        .subscribe { records -> if (records) { log.info(summaryText(records, params.outdir)) } }
    COMPARE.out.table.subscribe { table -> log.info('\nAIoD comparison\n' + table.text) }
    COUNT.out.counted
        .flatMap { model, ids -> ids.collect { id -> "${params.outdir}/${model.subdir ? model.subdir + '/' : ''}${id}.regions.csv" } }
        .toSortedList()
        .subscribe { paths -> if (paths) { log.info("\nAIoD region tables (objects per atlas region, docs/measure.md)\n  " + paths.join('\n  ')) } }

    workflow.onComplete = {
        if (workflow.success) {
            log.info("AIoD: done in ${workflow.duration}; results in ${params.outdir}, cache in ${params.root_dir}/aiod_cache")
        }
    }
    logErrors()
}

// `-entry FINETUNE`: train a registered model on annotated images and register the new version in
// --registry_dir (docs/finetune.md). The checks come first (FINETUNE_CHECK, nothing fetched or
// written before it passes), then the model is resolved and fetched as for a segmentation run,
// and one task in the family's environment trains, scores before and after, and registers.
workflow FINETUNE {
    def problem = paramProblem(file("${projectDir}/nextflow_schema.json").toFile(), params)
    if (problem) {
        error("AIOD ERROR: ${problem}")
    }
    [input: 'a CSV samplesheet with columns id,image,ground_truth[,split]', finetune_name: 'the new version\'s name',
     registry_dir: 'the lab registry directory the new version is written to'].each { name, what ->
        if (!params[name]) {
            error("AIOD ERROR: -entry FINETUNE: --${name} is required: ${what} (see docs/finetune.md)")
        }
    }
    if (params.models) {
        error("AIOD ERROR: -entry FINETUNE fine-tunes one model: give --model and --model_version, not --models")
    }
    [input: params.input, finetune_params: params.finetune_params, model_params: params.model_params].each { name, path ->
        if (path && !file(path).exists()) {
            error("AIOD ERROR: --${name} ${path}: file not found")
        }
    }
    if (!file(params.registry_dir).isDirectory()) {
        error("AIOD ERROR: --registry_dir ${params.registry_dir}: directory not found; create it (an empty folder is an empty registry)")
    }
    code = stepDigests(file("${projectDir}/src/aiod").toFile())
    registry = filesDigest(new File('/'), manifestFiles([file("${projectDir}/model_registry").toFile(), file(params.registry_dir).toFile()]))
    samplesheet = file(params.input)
    train_params = params.finetune_params ? file(params.finetune_params) : []

    // [samplesheet, its absolute path]: [annotated.csv, '/data/annotated.csv']
    ch_sheet = channel.of([samplesheet, samplesheet.toAbsolutePath().toString()])
    FINETUNE_CHECK(ch_sheet, train_params, code.FINETUNE_CHECK)

    // as for a segmentation run, once the checks have passed
    request = [model: params.model, version: params.model_version ?: '', task: params.task ?: '', models: '',
               source: params.model_params ? file(params.model_params).toString() : '']
    RESOLVE_MODEL(FINETUNE_CHECK.out.checked.map { checked -> [request, params.model_params ? file(params.model_params) : []] },
                  registry, code.RESOLVE_MODEL)
    // [model, its spec]: [[index: 0, label: 'cellpose_nuclei', subdir: '', family: 'cellpose', locations: 1], 0.json]
    ch_resolved = RESOLVE_MODEL.out.models.flatten().map { spec ->
        def m = new groovy.json.JsonSlurperClassic().parse(spec.toFile())
        [[index: m.index, label: m.label, subdir: m.subdir, family: m.family, locations: m.locations.size()], spec]
    }
    FETCH_ARTIFACTS(ch_resolved, code.FETCH_ARTIFACTS)

    // [samplesheet, its absolute path, [image and ground truth...]]: the files, so that a changed one reruns the training
    ch_data = ch_sheet.map { sheet, source ->
        def rows = sheet.splitCsv(header: true, quote: '"')
        [sheet, source, rows.collectMany { row -> [row.image, row.ground_truth].findAll { p -> p }.collect { p -> sheet.parent.resolve(p.trim()) } }]
    }
    FINETUNE_TRAIN(FETCH_ARTIFACTS.out.model, ch_data, train_params, code.FINETUNE_TRAIN)

    FINETUNE_TRAIN.out.report.subscribe { model, record, page ->
        def r = new groovy.json.JsonSlurperClassic().parse(record.toFile())
        if (r.metrics) {
            def f1 = { key -> String.format('%.3f', r.metrics[key].pooled.f1 as double) }
            log.info("\nAIoD fine-tuning: ${r.family}/${r.name} from ${r.parent}, ${r.epochs_done} epochs; F1@0.5 on the test images ${f1('before')} -> ${f1('after')}; " +
                     (r.registered ? "registered in ${params.registry_dir}" : "NOT registered: not better than ${r.parent} (--finetune_register always registers it anyway)") +
                     "\n  ${params.outdir}/finetune.html")
        }
    }
    logErrors()
}

// The run's AIOD ERROR lines, or why it stopped, as the last thing it prints.
def logErrors() {
    workflow.onError = {
        def reasons = (workflow.errorReport ?: '').readLines().findAll { line -> line.contains('AIOD ERROR:') }*.trim().unique()
        def why = workflow.errorMessage ?: (workflow.errorReport ?: '').readLines().find { line -> line.trim() } ?: 'see .nextflow.log'
        log.error(reasons ? reasons.join('\n') : "AIoD stopped: ${why}")
    }
}

// A process output of one or several files, as a list.
def asList(files) {
    return files instanceof List ? files : [files]
}

// The run, as the report names it: the exact command, the versions and the profile.
def runInfo() {
    return new groovy.json.JsonBuilder([command: workflow.commandLine, nextflow_version: nextflow.version.toString(),
        pipeline_version: workflow.manifest.version, started: workflow.start.toString(), profile: workflow.profile,
        session: workflow.sessionId.toString()]).toString()
}

// One line per image and model: where it came from (cache or computed), objects found, where it went.
def summaryText(List records, String outdir) {
    def several = records*.model_label.unique().size() > 1
    def lines = ['', 'AIoD summary', String.format('  %-20s %-9s %10s  %s', 'image', 'source', 'objects', 'result')]
    records.each { r ->
        def where = several ? "${outdir}/${r.model_label}/${r.id}.ome.zarr" : "${outdir}/${r.id}.ome.zarr"
        lines << String.format('  %-20s %-9s %10s  %s', r.id, r.cache_hit ? 'cache' : 'computed', r.n_objects == null ? '-' : r.n_objects, where)
    }
    lines << "  beside each mask its object table: <id>.objects.csv (.parquet), one row per object"
    def computed = records.count { r -> !r.cache_hit }
    def what = several ? "${records.size()} result(s) of ${records*.id.unique().size()} image(s) x ${records*.model_label.unique().size()} models" : "${records.size()} image(s)"
    lines << "  ${what}: ${computed} computed, ${records.size() - computed} from the cache"
    return lines.join('\n')
}
